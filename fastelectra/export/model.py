"""`fastelectra export`: a bundle -> one ONNX file that gives embeddings, checked, then put in place.

    read the bundle's model -> add the pooling head (`head`) -> [put the tokenizer in front
    (`text_graph`)] -> record what it is in metadata_props -> save beside OUT -> run it against
    `Encoder.embed` (`check`) -> append its figures to metadata_props -> move it to OUT

Nothing is written at OUT unless the check passes, and OUT is replaced only if it is a file this
command wrote before (its metadata says so).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from fastelectra.bundle import META_FILE, POOLINGS, Bundle, load_bundle
from fastelectra.convert.fuse import save_model
from fastelectra.destinations import FileKind, check_file
from fastelectra.errors import InputError
from fastelectra.export.check import check_export
from fastelectra.export.head import add_head
from fastelectra.export.metadata import (
    append_metadata,
    as_strings,
    exported_metadata,
    is_exported_model,
)
from fastelectra.workdirs import scratch_directory

log = logging.getLogger(__name__)

EXPORTED = FileKind("an ONNX file written by `fastelectra export`", is_exported_model)


@dataclass(frozen=True)
class ExportOptions:
    """What the exported file computes.

    Attributes:
        pooling: ``"pooled"``, ``"cls"`` or ``"mean"``; None: the bundle's own, as
            `Encoder.embed` and every other entry point.
        normalize: L2-normalise each vector inside the graph.
        text_input: take strings (`text`, [batch]) and tokenise inside the graph.
    """

    pooling: str | None = None
    normalize: bool = False
    text_input: bool = False


def export_model(
    bundle_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: ExportOptions = ExportOptions(),
) -> dict[str, Any]:
    """Write the exported file to `out`; returns its metadata (`metadata_props`, as a dict).

    Raises:
        BundleError: the bundle is missing or damaged.
        DestinationError: `out` is something this command did not write.
        ExportCheckError: the file does not give `Encoder.embed`'s vectors (nothing written).
        TokenizerRuleError: `text_input` and a rule of the bundle's tokenizer cannot be
            expressed with onnxruntime-extensions' operators (nothing written).
    """
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"{out}: name the file to write with the .onnx suffix")
    check_file(out, EXPORTED)
    bundle = load_bundle(bundle_dir)
    pooling = bundle.meta.pooling if options.pooling is None else options.pooling
    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    options = dataclasses.replace(options, pooling=pooling)

    model = onnx.load(str(bundle.model_path))
    add_head(model, pooling, options.normalize)
    if options.text_input:
        from fastelectra.export.text_graph import add_tokenizer

        add_tokenizer(model, bundle)
    props = exported_metadata(bundle, options, bundle_sha256(bundle))
    with scratch_directory(out, "work") as work:
        staged = work / out.name
        _set_metadata(model, props)
        save_model(model, staged)  # inline, or OUT.onnx.data beside it past 2 GB
        del model
        figures = check_export(staged, bundle, options)
        props["verification"] = figures
        append_metadata(staged, {"verification": figures})
        check_file(out, EXPORTED)  # nothing else took its place meanwhile
        data = staged.with_name(staged.name + ".data")
        if data.exists():
            os.replace(data, out.with_name(out.name + ".data"))
        os.replace(staged, out)
    log.info("wrote %s", out)
    return props


def bundle_sha256(bundle: Bundle) -> str:
    """The sha256 of the bundle's fastelectra.json, which holds every file's sha256."""
    return hashlib.sha256((bundle.path / META_FILE).read_bytes()).hexdigest()


def _set_metadata(model: onnx.ModelProto, props: dict[str, Any]) -> None:
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, as_strings(props))
