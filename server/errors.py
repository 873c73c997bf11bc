"""The statuses the server chooses, as exceptions the plain functions raise and the servicer turns into replies.

Every failure a client can cause is one of these, with a message that names the field and the reason
("labels[0]: must be in 0..9, got 12"). `to_status` builds the gRPC status with a google.rpc.BadRequest
field violation (or ErrorInfo-free plain message for non-argument errors), so other languages read the same
details the Python SDK does.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class ServiceError(Exception):
    """A chosen gRPC status. `field` (optional) names the offending request field."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED


class BadModelOutput(ServiceError):
    """A model produced non-finite or out-of-range values from valid inputs: the server's failure (INTERNAL),
    never answered OK. `model` names it (for the log and ganserve_bad_model_outputs_total)."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, model: str):
        super().__init__(message)
        self.model = model


def require(cond: bool, field: str, message: str) -> None:
    """Raise InvalidArgument(field: message) unless cond."""
    if not cond:
        raise InvalidArgument(message, field)


def to_status(err: ServiceError) -> grpc.Status:
    """The gRPC status for `err`, with a BadRequest field violation when a field is named."""
    return rpc_status.to_status(to_rpc_status(err))


def to_rpc_status(err: ServiceError) -> status_pb2.Status:
    """`err` as a google.rpc.Status message (what travels in grpc-status-details-bin)."""
    details = []
    if err.field:
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=err.field, description=err.reason)])
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    return status_pb2.Status(code=getattr(code_pb2, err.code.name), message=str(err), details=details)
