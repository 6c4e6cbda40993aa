"""Transport-free core: tokenize -> schedule -> run ONNX Runtime -> pool -> normalize -> encode."""
