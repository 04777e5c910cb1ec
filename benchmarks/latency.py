"""Issue 3: TF against ORT FP32 unfused, fused FP32, INT8 dynamic and INT8 static, side by side.

    python benchmarks/latency.py .cache/bundles/electra-large-2020-{fp32,int8-dynamic,int8-static} \\
        --source electra-large-2020 --batch 1 --seq 128 --threads 2

`fastelectra bench` with one more variant: the unfused ONNX export of the source (tf2onnx's
graph before `fuse`), which is no bundle and so cannot be passed as one. The source is loaded
once, for the export and as the TensorFlow variant; the export lives in a temporary folder for
the run. `--with-ort-skipln` adds each bundle once more with onnxruntime's own CPU
SkipLayerNormalization kernel, which the runtime otherwise replaces (`runtime/cpu_view.py`);
`--with-int8-gemm-chain` adds the source's INT8 weight products alone, chained as in the model
(`fastelectra/bench/gemm_chain.py`): the INT8 bundle's lower bound with onnxruntime's kernels.
Takes every `fastelectra bench` option; the defaults here are the issue-3 cell
(batch 1, seq 128, 2 threads, 10 s per variant). Writes
benchmarks/results/<date>-<cpu>/latency-<source>-b<batch>-s<seq>/ unless --out is given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

UNFUSED = "onnx-fp32-unfused"


def main(argv: list[str] | None = None) -> int:
    from fastelectra.bench import cli
    from fastelectra.bench.machine import results_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_bench_arguments(parser)
    parser.add_argument(
        "--with-ort-skipln",
        action="store_true",
        help="also run each bundle with onnxruntime's CPU SkipLayerNorm kernel, as "
        "<bundle>+ort-skipln (the runtime splits it into Add + LayerNormalization)",
    )
    parser.add_argument(
        "--with-int8-gemm-chain",
        action="store_true",
        help="also time the source's INT8 weight products alone (fastelectra.bench.gemm_chain): "
        "the INT8 bundle's lower bound with onnxruntime's kernels",
    )
    parser.set_defaults(batch=[1], seq=[128], threads=2, duration=10.0)
    args = parser.parse_args(argv)
    if not args.source:
        parser.error("--source is required: the TensorFlow original and the unfused export")
    if args.out is None:
        name = f"latency-{Path(args.source).name}-b{args.batch[0]}-s{args.seq[0]}"
        args.out = str(results_dir(Path(__file__).parent / "results") / name)

    from fastelectra.bench.variants import (
        OnnxVariant,
        TensorFlowVariant,
        configure_tensorflow_threads,
    )
    from fastelectra.convert.resolve import resolve_source
    from fastelectra.convert.source import load_source
    from fastelectra.convert.tf_export import export_onnx
    from fastelectra.precisions import FP32, INT8_DYNAMIC

    started = time.perf_counter()
    threads = configure_tensorflow_threads(args.threads)  # before TensorFlow starts
    providers = cli.parse_providers(args.providers)
    spinning = not args.no_spinning
    source = load_source(resolve_source(args.source))
    tensorflow = TensorFlowVariant(source, args.source, threads)
    tensorflow.load_seconds = time.perf_counter() - started
    command = " ".join(["python", "benchmarks/latency.py", *(argv or sys.argv[1:])])
    with tempfile.TemporaryDirectory(prefix="fastelectra-latency-") as tmp:
        print(f"exporting {args.source} without fusion", file=sys.stderr, flush=True)
        unfused = export_onnx(source, Path(tmp) / "unfused.onnx").path
        extra = [
            OnnxVariant.from_model(
                UNFUSED,
                unfused,
                FP32,
                source.dimensions,
                providers,
                args.threads,
                spinning,
            ),
            tensorflow,
        ]
        if args.with_int8_gemm_chain:
            from fastelectra.bench.gemm_chain import NAME, write_weight_gemm_model

            chain = write_weight_gemm_model(source.dimensions, Path(tmp) / "gemm_chain.onnx")
            extra.append(
                OnnxVariant.from_model(
                    NAME,
                    chain,
                    INT8_DYNAMIC,
                    source.dimensions,
                    providers,
                    args.threads,
                    spinning,
                )
            )
        if args.with_ort_skipln:
            extra += [
                OnnxVariant.from_bundle(path, providers, args.threads, False, spinning)
                for path in args.bundles
            ]
        args.source = None  # loaded above: the bench must not load it a second time
        # The memory runs reload each variant from its files, so they run inside this block.
        options = cli.BenchOptions.from_args(args)
        return cli.run_bench(options, extra_variants=extra, command=command)


if __name__ == "__main__":
    sys.exit(main())
