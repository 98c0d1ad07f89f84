"""How fast the model runs, never what it computes: the CPU fast paths, ONNX, int8 and process settings."""
