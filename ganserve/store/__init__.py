"""The model store: manifest schema, sha256, atomic publish, version resolution, ONNX Runtime sessions."""
