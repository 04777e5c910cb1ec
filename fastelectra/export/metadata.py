"""What an exported file says about itself, in its `metadata_props` (strings only).

Keys: `fastelectra_export` (format version: how `fastelectra export` recognises a file it
may replace), `source`, `precision`, `pooling`, `normalize`, `max_sequence_length`,
`bundle_sha256`, `input` (``ids`` or ``text``), `do_lower_case`, and `verification` (JSON:
the check's figures against `Encoder.embed`).
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastelectra.runtime.protowire import (
    ENTRY_KEY,
    ENTRY_VALUE,
    LEN,
    MODEL_METADATA_PROPS,
    WireError,
    fields,
    length_delimited,
    string,
    text,
)

if TYPE_CHECKING:
    from fastelectra.bundle import Bundle
    from fastelectra.export.model import ExportOptions

EXPORT_FORMAT_KEY = "fastelectra_export"
EXPORT_FORMAT = 1


def exported_metadata(bundle: Bundle, options: ExportOptions, sha256: str) -> dict[str, Any]:
    meta = bundle.meta
    return {
        EXPORT_FORMAT_KEY: EXPORT_FORMAT,
        "source": Path(meta.source).name if Path(meta.source).is_absolute() else meta.source,
        "precision": meta.precision.name,
        "pooling": options.pooling,
        "normalize": options.normalize,
        "input": "text" if options.text_input else "ids",
        "max_sequence_length": meta.max_sequence_length,
        "do_lower_case": meta.do_lower_case,
        "bundle_sha256": sha256,
    }


def as_strings(props: dict[str, Any]) -> dict[str, str]:
    """metadata_props values: strings as they are, everything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()}


def append_metadata(path: Path, props: dict[str, Any]) -> None:
    """Add `props` to the metadata_props of the saved model at `path`, in place.

    A repeated protobuf field may be continued anywhere in its message, so each entry is
    appended to the end of the file: neither the graph nor the weights are read or written
    again.
    """
    with open(path, "ab") as f:
        for key, value in as_strings(props).items():
            entry = string(ENTRY_KEY, key) + string(ENTRY_VALUE, value)
            f.write(length_delimited(MODEL_METADATA_PROPS, entry))


def read_metadata(path: Path) -> dict[str, str]:
    """The file's metadata_props, read off the wire without loading the graph or weights."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        props = {}
        for field in fields(buf):
            if field.number != MODEL_METADATA_PROPS or field.wire_type != LEN:
                continue
            entry = {f.number: text(buf, f) for f in fields(buf, field.value, field.end)}
            props[entry.get(ENTRY_KEY, "")] = entry.get(ENTRY_VALUE, "")
        return props


def is_exported_model(path: Path) -> bool:
    """Whether `path` is a file `fastelectra export` wrote (which it may therefore replace)."""
    try:
        return EXPORT_FORMAT_KEY in read_metadata(path)
    except (OSError, ValueError, WireError, UnicodeDecodeError):
        return False
