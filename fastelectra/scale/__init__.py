"""Scale-out on existing engines: Ray (Serve and Data) and Triton Inference Server.

Each module imports its engine when used, never at package import, so `fastelectra` itself
needs neither Ray nor tritonclient:

* `fastelectra.scale.ray_data`: `embed_corpus`, a corpus -> Parquet job over encoder actors.
* `fastelectra.scale.ray_serve`: `build_app`, a Ray Serve deployment with request batching.
* `fastelectra.scale.triton`: `export_triton`, a Triton model repository for a bundle.
* `fastelectra.scale.cli`: the `export-triton` command, and `embed --ray`'s hand-over to
  `embed_corpus`.
"""
