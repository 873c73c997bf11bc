"""Typed exceptions: one table maps each gRPC status code to a class; a raw grpc.RpcError never escapes.

    GanserveError
    ├── InvalidArgumentError     INVALID_ARGUMENT, OUT_OF_RANGE   (also a ValueError)
    ├── NotFoundError            NOT_FOUND                        (also a LookupError)
    ├── FailedPreconditionError  FAILED_PRECONDITION
    ├── ResourceExhaustedError   RESOURCE_EXHAUSTED               (retried)
    ├── UnavailableError         UNAVAILABLE                      (retried; also a ConnectionError)
    ├── DeadlineExceededError    DEADLINE_EXCEEDED                (also a TimeoutError)
    ├── AuthenticationError      UNAUTHENTICATED, PERMISSION_DENIED
    ├── CancelledError           CANCELLED
    └── InternalError            INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS, ABORTED

`err.field_violations` holds the server's google.rpc.BadRequest details as (field, description) pairs.
"""

from __future__ import annotations

import grpc


class GanserveError(Exception):
    """Any error from a ganserve call. `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, field_violations: list[tuple[str, str]] | None = None):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.field_violations = field_violations or []

    @property
    def field(self) -> str | None:
        """The first offending request field the server named, if any."""
        return self.field_violations[0][0] if self.field_violations else None


class InvalidArgumentError(GanserveError, ValueError):
    pass


class NotFoundError(GanserveError, LookupError):
    pass


class FailedPreconditionError(GanserveError):
    pass


class ResourceExhaustedError(GanserveError):
    pass


class UnavailableError(GanserveError, ConnectionError):
    pass


class DeadlineExceededError(GanserveError, TimeoutError):
    pass


class AuthenticationError(GanserveError):
    pass


class CancelledError(GanserveError):
    pass


class InternalError(GanserveError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[GanserveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.UNIMPLEMENTED: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
    grpc.StatusCode.ABORTED: InternalError,
}
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def _violations(code, details, trailing) -> list[tuple[str, str]]:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    class _Call:  # rpc_status.from_call reads these three
        def __init__(self):
            self.code, self.details, self.trailing_metadata = (lambda: code), (lambda: details), (lambda: trailing)

    try:
        status = rpc_status.from_call(_Call())
    except ValueError:
        return []
    out = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


def from_status(code: grpc.StatusCode, details: str, trailing_metadata=()) -> GanserveError:
    cls = _BY_CODE.get(code, GanserveError)
    return cls(code, details or "", _violations(code, details, trailing_metadata or ()))


def from_rpc_error(err: grpc.RpcError) -> GanserveError:
    """The typed exception for a failed call (raise it `from err`)."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    trailing = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else ()
    return from_status(code, details, trailing)
