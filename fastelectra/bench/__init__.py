"""`fastelectra bench`: latency, throughput, memory and the GEMM floor of bundles on this machine.

Modules, each small and importable without TensorFlow:

    machine   what the figures were measured on (CPU kind, ISA, cores, versions, git commit)
    variants  what is timed: an onnxruntime session over a bundle (or a bare model), or the
              TensorFlow original
    cells     synthetic inputs and the round-robin timing of batch x sequence cells
    grid      every cell of the grid timed and set against the floor
    memory    peak RSS of each variant, each in a fresh subprocess
    floor     the roofline: FLOPs per cell and this machine's FP32 / INT8 matrix-multiply
              rates, against the weight bytes a call reads and the memory bandwidth
    weights   the weight bytes one call of a model reads, from the model file
    bandwidth this machine's streaming-read memory bandwidth
    texts     the text sets peers and traffic run on, and comparing their embeddings
    peers     sentence-transformers on the same texts, for throughput and accuracy
    traffic   dynamic batching against fixed padding on a realistic text mix
    report    terminal tables, results.json, Markdown
    plots     PNG figures (matplotlib, Agg)
    cli       the `bench` subcommand tying these together
"""
