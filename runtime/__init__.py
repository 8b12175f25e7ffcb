"""Torch-free runtime: load an exported clip-debias artifact and run / verify it (numpy, pillow, onnxruntime)."""
