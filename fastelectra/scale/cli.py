"""`fastelectra export-triton BUNDLE REPO`: a Triton model repository for a bundle."""

from __future__ import annotations

import argparse
import sys

from fastelectra.scale.triton import KINDS, TritonOptions


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
    )
    model_dir = export_triton(args.bundle, args.repo, name=args.name, options=options)
    print(model_dir, file=sys.stdout)
    return 0
