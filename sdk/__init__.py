"""ganserve SDK.

    from sdk import Client
    x = Client().sample(label=7)          # numpy (1, 1, 28, 28) in [-1, 1]
    to_pil(x[0]).show()

`Client()` talks to the `target` argument, else $GANSERVE_TARGET, else localhost:50051. `AsyncClient` mirrors
it over grpc.aio. Errors are the typed exceptions below (a raw grpc.RpcError never escapes). The CLI is
`python -m sdk`, the batch job `python -m sdk.batch`.
"""

from sdk._aio import AsyncClient
from sdk._client import Client
from sdk._errors import (AuthenticationError, CancelledError, DeadlineExceededError, FailedPreconditionError,
                         GanserveError, InternalError, InvalidArgumentError, NotFoundError, ResourceExhaustedError,
                         UnavailableError)
from sdk._images import grid, save_grid, to_pil
from sdk._types import (Chunk, Divergence, Evaluation, Interpolation, Inversion, ModelInfo, SampleResult,
                        VersionStatus)

__all__ = [
    "Client", "AsyncClient",
    "GanserveError", "InvalidArgumentError", "NotFoundError", "FailedPreconditionError", "ResourceExhaustedError",
    "UnavailableError", "DeadlineExceededError", "AuthenticationError", "CancelledError", "InternalError",
    "to_pil", "save_grid", "grid",
    "ModelInfo", "VersionStatus", "SampleResult", "Chunk", "Interpolation", "Inversion", "Divergence", "Evaluation",
]
