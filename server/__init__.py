"""ganserve server: `python -m server`. gRPC app, model registry, ONNX Runtime engine, batcher, handlers.

Importing `server` imports nothing heavy; torch is never imported by the server.
"""
