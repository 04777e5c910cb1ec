"""The scale package's command line: `fastelectra export-triton BUNDLE REPO` (a Triton model
repository for a bundle) and `fastelectra embed --ray` (a corpus embedded by Ray Data).

`embed --ray` is parsed by the embed command (`fastelectra.runtime.cli`), which hands its
arguments here only when `--ray` is given; Ray and pyarrow load only then.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastelectra.errors import DependencyMissing, UsageError
from fastelectra.runtime.lines import STDIO
from fastelectra.scale.triton import KINDS, TritonOptions
from fastelectra.workdirs import cleanup_on_signals

RAY_MODULE = "fastelectra.scale.ray_data"
# embed options that `embed_corpus` has no parameter for, and their "not given" values.
RAY_UNSUPPORTED = {
    "--threads": ("threads", None),
    "--providers": ("providers", None),
    "--max-length": ("max_length", None),
    "--long": ("long", None),
    "--errors": ("errors", None),
    "--include-text": ("include_text", False),
}


def add_export_triton_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TritonOptions()
    parser.add_argument("bundle", help="the bundle directory")
    parser.add_argument("repo", help="the Triton model repository to write the model into")
    parser.add_argument("--name", help="Triton model name (default: the bundle's directory name)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=defaults.max_batch_size,
        help="largest batch Triton forms (default %(default)s)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=defaults.instances,
        help="model instances (per GPU for KIND_GPU; default %(default)s)",
    )
    parser.add_argument(
        "--kind", choices=KINDS, default=defaults.kind, help="instance kind (default %(default)s)"
    )
    parser.add_argument(
        "--tensorrt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TensorRT execution accelerator at the bundle's precision (default: on for KIND_GPU)",
    )
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=defaults.max_queue_delay_us,
        help="how long Triton holds a request to batch it with others (default %(default)s)",
    )
    parser.add_argument(
        "--server-repository",
        help="where the server sees REPO, e.g. /models in the Triton container (used for the "
        "paths of files TensorRT opens; default: REPO's absolute path)",
    )
    parser.add_argument(
        "--trt-cache",
        dest="trt_cache_dir",
        help="server-side directory for TensorRT engine and timing caches (default: none, "
        "engines are rebuilt on every model load)",
    )
    parser.add_argument(
        "--pooling",
        choices=("pooled", "cls", "mean"),
        help="write the `fastelectra export` file with this pooling inside instead of the bundle's "
        "model: Triton then answers `embedding` [hidden] per text (default: the model as is, "
        "pooled_output and sequence_output)",
    )
    parser.add_argument(
        "--normalize", action="store_true", help="with --pooling: L2-normalised embeddings"
    )


@cleanup_on_signals()  # SIGTERM removes the staged model folder before the process ends
def run_export_triton(args: argparse.Namespace) -> int:
    from fastelectra.scale.triton import export_triton

    options = TritonOptions(
        max_batch_size=args.max_batch_size,
        instances=args.instances,
        kind=args.kind,
        tensorrt=args.tensorrt,
        max_queue_delay_us=args.max_queue_delay_us,
        server_repository=args.server_repository,
        trt_cache_dir=args.trt_cache_dir,
        pooling=args.pooling,
        normalize=args.normalize,
    )
    model_dir = export_triton(args.bundle, args.repo, name=args.name, options=options)
    print(model_dir, file=sys.stdout)
    return 0


def add_ray_embed_arguments(parser: argparse.ArgumentParser) -> None:
    """`embed`'s Ray options, beside the runtime's own (`fastelectra.runtime.cli`)."""
    from fastelectra.runtime.cli import positive_int

    parser.add_argument(
        "--ray",
        action="store_true",
        help="embed with Ray Data (fastelectra.scale.ray_data) into --output FILE.parquet; needs "
        "--input (a text file, one text per line, or Parquet with a text column)",
    )
    parser.add_argument(
        "--replicas",
        type=positive_int,
        metavar="N",
        help="--ray: encoder actors, each loading the bundle (default: Ray mode's own)",
    )


def run_embed_here_or_on_ray(args: argparse.Namespace) -> int:
    """`fastelectra embed`: on Ray with `--ray`, else the runtime's streaming embed."""
    from fastelectra.runtime.cli import run_embed

    if args.ray:
        return embed_on_ray(args)
    if args.replicas is not None:
        raise UsageError("--replicas needs --ray")
    return run_embed(args)


def embed_on_ray(args: argparse.Namespace) -> int:
    """`fastelectra embed BUNDLE --ray -i FILE -o FILE.parquet` (the embed command's arguments)."""
    if args.input == STDIO:
        raise UsageError("--ray reads a file: give --input FILE (Ray workers cannot share stdin)")
    if args.output is None or Path(args.output).suffix.lower() != ".parquet":
        raise UsageError("--ray writes Parquet: give --output FILE.parquet")
    unsupported = [
        flag for flag, (dest, unset) in RAY_UNSUPPORTED.items() if getattr(args, dest) != unset
    ]
    if unsupported:
        raise UsageError(f"--ray does not support {', '.join(unsupported)}")
    if not Path(args.input).exists():  # a file, or a directory of Parquet files
        raise OSError(f"{args.input}: cannot read input (no such file or directory)")
    try:
        from fastelectra.scale.ray_data import embed_corpus
    except ModuleNotFoundError as e:
        if e.name and RAY_MODULE.startswith(e.name):
            raise DependencyMissing(f"--ray: this fastelectra has no {RAY_MODULE}") from e
        raise DependencyMissing(f"--ray needs {e.name}: pip install 'ray[data]'") from e
    options: dict[str, object] = {"pooling": args.pooling, "normalize": args.normalize}
    # Batch size and replicas are throughput knobs: unless given, Ray mode keeps its own.
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.replicas is not None:
        options["replicas"] = args.replicas
    rows = embed_corpus(str(args.bundle), str(args.input), str(args.output), **options)
    if not args.quiet:
        print(f"fastelectra embed: wrote {rows} embeddings to {args.output}", file=sys.stderr)
    return 0
