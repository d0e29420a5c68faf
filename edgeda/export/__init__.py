"""Export: ONNX graphs, TensorRT plugins and engines for edge devices."""
