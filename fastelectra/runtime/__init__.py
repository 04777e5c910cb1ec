"""The runtime: load a bundle and embed texts with onnxruntime, without TensorFlow or onnx.

>>> from fastelectra.runtime import Encoder
>>> encoder = Encoder.load("bundles/electra-large", providers="cuda")
>>> encoder.embed(["a sentence"], pooling="mean", normalize=True).shape
(1, 1024)
"""

from fastelectra.bundle import BundleError
from fastelectra.runtime.encoder import Encoder, EncoderOutput, TruncationWarning

__all__ = ["BundleError", "Encoder", "EncoderOutput", "TruncationWarning"]
