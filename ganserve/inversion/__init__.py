"""Invert without torch: the gradient graph derived from generator.onnx and the optimisation runtime."""
