"""SavedModel -> ONNX -> fused -> FP16 / INT8, verified against TensorFlow.

Needs the `convert` extra (TensorFlow, tf2onnx, onnx); the runtime never imports this package.
"""
