"""sdk/_errors.py without a server: the status details read from the grpc-status-details-bin trailer, with
google.rpc's own Status/BadRequest (the server's encoder) as the oracle, and the typed exception for each call."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from sdk import _errors
from sdk._errors import GanserveError, InternalError, InvalidArgumentError


def _details(*violations, type_url="type.googleapis.com/google.rpc.BadRequest") -> bytes:
    bad = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations])
    status = status_pb2.Status(code=3, message="bad")
    status.details.add(type_url=type_url, value=bad.SerializeToString())
    return status.SerializeToString()


def test_the_private_status_messages_are_wire_identical_to_google_rpc():
    """sdk/_errors.py builds google.rpc.Status and BadRequest in its own descriptor pool (called here, not only at
    import): every field's number, type, repetition, presence (proto3) and name must match google's, both ways over
    the wire."""
    status_cls, bad_cls = _errors._rpc_messages()
    violation = bad_cls.DESCRIPTOR.fields_by_name["field_violations"].message_type._concrete_class
    any_cls = status_cls.DESCRIPTOR.fields_by_name["details"].message_type._concrete_class
    for ours, theirs, names in (
            (status_cls, status_pb2.Status, ["code", "message", "details"]),
            (bad_cls, error_details_pb2.BadRequest, ["field_violations"]),
            (violation, error_details_pb2.BadRequest.FieldViolation, ["field", "description"]),
            (any_cls, status_pb2.Status.DESCRIPTOR.fields_by_name["details"].message_type._concrete_class,
             ["type_url", "value"])):
        want, got = ([(f.name, f.number, f.type, f.is_repeated, f.has_presence,
                       f.message_type.name if f.message_type else None) for f in cls.DESCRIPTOR.fields]
                     for cls in (theirs, ours))
        assert got == want[:len(got)], ours.DESCRIPTOR.full_name  # google's FieldViolation has two more fields
        assert [f[0] for f in got] == names
    assert status_cls.DESCRIPTOR.full_name == "ganserve_sdk.rpc.Status"
    assert bad_cls.DESCRIPTOR.full_name == "ganserve_sdk.rpc.BadRequest"
    assert status_cls.DESCRIPTOR.file.name == "ganserve_sdk/rpc_status.proto"
    assert status_cls.DESCRIPTOR.file.package == "ganserve_sdk.rpc"
    blob = _details(("n", "must be at least 1"), ("m", "x"))
    parsed = status_cls.FromString(blob)
    assert (parsed.code, parsed.message, parsed.details[0].type_url) == (3, "bad",
                                                                         "type.googleapis.com/google.rpc.BadRequest")
    assert [(v.field, v.description) for v in bad_cls.FromString(parsed.details[0].value).field_violations] == [
        ("n", "must be at least 1"), ("m", "x")]
    assert status_pb2.Status.FromString(parsed.SerializeToString()) == status_pb2.Status.FromString(blob)


def test_field_violations_are_read_from_the_status_details_trailer():
    blob = _details(("n", "must be at least 1"), ("labels[2]", "must be in 0..9, got 12"))
    err = _errors.from_status(grpc.StatusCode.INVALID_ARGUMENT, "n: must be at least 1",
                              [("other", b"x"), ("grpc-status-details-bin", blob)])
    assert type(err) is InvalidArgumentError
    assert err.field_violations == [("n", "must be at least 1"), ("labels[2]", "must be in 0..9, got 12")]
    assert err.field == "n" and err.reason == "must be at least 1" and err.details == "n: must be at least 1"
    assert str(err) == "INVALID_ARGUMENT: n: must be at least 1"


@pytest.mark.parametrize("trailing", [
    (),
    None,
    [("grpc-status-details-bin", "not bytes")],
    [("grpc-status-details-bin", b"\xff\xff\xff")],                                        # not a Status
    [("other-bin", _details(("n", "x")))],                                                 # another trailer
    [("grpc-status-details-bin", _details(("n", "x"), type_url="type.googleapis.com/google.rpc.ErrorInfo"))],
])
def test_no_or_unreadable_details_give_no_violations(trailing):
    err = _errors.from_status(grpc.StatusCode.UNAVAILABLE, "tiny-gan@2 is UNAVAILABLE", trailing)
    assert err.field_violations == [] and err.field is None and err.reason == "tiny-gan@2 is UNAVAILABLE"


def test_a_status_without_details_text_gives_an_empty_string():
    err = _errors.from_status(grpc.StatusCode.INTERNAL, None)
    assert err.details == "" and str(err) == "INTERNAL: " and err.field_violations == []


class _RpcError(grpc.RpcError):
    def __init__(self, code, details, trailing):
        self._c, self._d, self._t = code, details, trailing

    def code(self):
        return self._c

    def details(self):
        return self._d

    def trailing_metadata(self):
        return self._t


def test_from_rpc_error_reads_code_details_and_trailer():
    err = _errors.from_rpc_error(_RpcError(grpc.StatusCode.NOT_FOUND, "model: no model 'x'",
                                           (("grpc-status-details-bin", _details(("model", "no model 'x'"))),)))
    assert type(err) is _errors.NotFoundError and err.code == grpc.StatusCode.NOT_FOUND
    assert err.details == "model: no model 'x'" and err.field_violations == [("model", "no model 'x'")]


def test_a_bare_rpc_error_is_unknown_with_its_text():
    err = _errors.from_rpc_error(grpc.RpcError("the channel broke"))
    assert type(err) is InternalError and err.code == grpc.StatusCode.UNKNOWN
    assert err.details == "the channel broke" and err.field_violations == []


def test_base_error_class_for_an_unmapped_code():
    err = _errors.from_status(grpc.StatusCode.ALREADY_EXISTS, "x", [])
    assert type(err) is GanserveError and str(err) == "ALREADY_EXISTS: x"
