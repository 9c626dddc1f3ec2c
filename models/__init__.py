"""Slow model: features, torch CTR model, training, ONNX export + parity, bundle, onnxruntime scorer. Imports only `streams`."""
