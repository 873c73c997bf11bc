"""ganserve on a Ray cluster (optional extra: pip install -e '.[ray]'; docs/scaling_out.md).

batch: the batch job's shards made by Ray actors that keep a generator's ONNX Runtime session loaded.
The online service on Ray Serve wraps the server's own handlers and lives with them (server/ray_serve.py).
"""
