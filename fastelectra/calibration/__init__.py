"""Text corpora -> calibration feeds -> activation ranges and TensorRT calibration tables.

The quantisers that use them live in `fastelectra.convert` (this package imports nothing of it).
"""
