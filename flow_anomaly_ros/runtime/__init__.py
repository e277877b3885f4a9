"""One inference interface for segmentation models: PyTorch, ONNX Runtime, TensorRT; export and engine cache."""
