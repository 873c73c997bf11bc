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

`err.field_violations` holds the server's google.rpc.BadRequest details as (field, description) pairs; `err.reason`
is the server's reason without the field name (e.g. why a model version is UNAVAILABLE).
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError


class GanserveError(Exception):
    """Any error from a ganserve call. `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, field_violations: list[tuple[str, str]] | None = None):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.field_violations = field_violations or []

    @property
    def reason(self) -> str:
        """The server's reason without the field name: "tiny-gan@2 is UNAVAILABLE: ... non-finite value(s) ..."."""
        return self.field_violations[0][1] if self.field_violations else self.details

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


def _rpc_messages():
    """google.rpc.Status and BadRequest, wire-identical, in a private descriptor pool: the thin SDK reads the
    server's field violations without googleapis-common-protos/grpcio-status (and cannot clash with them)."""
    S, M, R = (descriptor_pb2.FieldDescriptorProto.TYPE_STRING, descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
               descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)

    def msg(name, *fields):
        m = descriptor_pb2.DescriptorProto(name=name)
        for number, (fname, ftype, *rest) in enumerate(fields, 1):
            f = m.field.add(name=fname, number=number, type=ftype, label=rest[1] if len(rest) > 1 else 1)
            if rest and rest[0]:
                f.type_name = rest[0]
        return m

    file = descriptor_pb2.FileDescriptorProto(name="ganserve_sdk/rpc_status.proto", package="ganserve_sdk.rpc",
                                              syntax="proto3")
    file.message_type.extend([
        msg("Any", ("type_url", S), ("value", descriptor_pb2.FieldDescriptorProto.TYPE_BYTES)),
        msg("Status", ("code", descriptor_pb2.FieldDescriptorProto.TYPE_INT32), ("message", S),
            ("details", M, ".ganserve_sdk.rpc.Any", R)),
        msg("FieldViolation", ("field", S), ("description", S)),
        msg("BadRequest", ("field_violations", M, ".ganserve_sdk.rpc.FieldViolation", R)),
    ])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName(f"ganserve_sdk.rpc.{n}"))
            for n in ("Status", "BadRequest"))


_Status, _BadRequest = _rpc_messages()


def _violations(trailing) -> list[tuple[str, str]]:
    """BadRequest field violations from the `grpc-status-details-bin` trailer (a serialized google.rpc.Status)."""
    blob = next((v for k, v in trailing if k == "grpc-status-details-bin"), None)
    if not isinstance(blob, bytes):
        return []
    try:
        status = _Status.FromString(blob)
        return [(v.field, v.description) for d in status.details if d.type_url.endswith("/google.rpc.BadRequest")
                for v in _BadRequest.FromString(d.value).field_violations]
    except DecodeError:
        return []


def from_status(code: grpc.StatusCode, details: str, trailing_metadata=()) -> GanserveError:
    cls = _BY_CODE.get(code, GanserveError)
    return cls(code, details or "", _violations(trailing_metadata or ()))


def from_rpc_error(err: grpc.RpcError) -> GanserveError:
    """The typed exception for a failed call (raise it `from err`)."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    trailing = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else ()
    return from_status(code, details, trailing)
