"""Text corpora -> calibration feeds, static INT8 (QDQ) and TensorRT calibration tables."""
