"""The ganserve v1 contract for Python: generated stubs plus the functions the contract defines.

- `protos.ganserve.v1.generator_pb2` / `generator_pb2_grpc`: generated from protos/ganserve/v1/*.proto by
  `python -m protos.generate` (never edited by hand).
- `protos.tensors`: Tensor message <-> numpy array.
- `protos.latents`: seed -> latents, and the interpolation paths (lerp, slerp) - one implementation shared
  by server, SDK and training, so a seed means the same images everywhere.

Nothing here imports torch.
"""
