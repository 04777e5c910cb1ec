"""fastelectra: optimised ONNX Runtime bundles and runtime for TF Hub BERT-family encoders.

`import fastelectra` is cheap: `Encoder` (runtime) and `build` (conversion, needs the
`convert` extra with TensorFlow) are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastelectra.version import __version__

__all__ = ["Encoder", "__version__", "build"]

if TYPE_CHECKING:
    from fastelectra.convert.build import build
    from fastelectra.runtime import Encoder


def __getattr__(name: str) -> Any:
    if name == "Encoder":
        from fastelectra.runtime import Encoder

        return Encoder
    if name == "build":
        from fastelectra.convert.build import build

        return build
    raise AttributeError(f"module 'fastelectra' has no attribute {name!r}")
