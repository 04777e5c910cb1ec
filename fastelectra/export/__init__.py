"""One self-contained ONNX file from a bundle: embeddings out, for any onnxruntime binding.

`export_model` (`fastelectra export`) writes the bundle's model with pooling and optional L2
normalisation inside the graph (`head`), and optionally the model card's tokenizer too
(`text_graph`, onnxruntime-extensions' operators); `check` runs the file against
`Encoder.embed` before it is put in place.
"""

from fastelectra.export.model import ExportOptions, export_model

__all__ = ["ExportOptions", "export_model"]
