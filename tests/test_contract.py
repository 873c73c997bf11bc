"""The v1 contract: stubs import, messages round-trip, names other services rely on, no drift."""

import shutil

import numpy as np
import pytest

from protos import generate, tensors
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc


def test_stubs_match_proto():
    assert generate.main(["--check"]) == 0


@pytest.mark.skipif(not (shutil.which("protoc") and shutil.which("protoc-gen-go")),
                    reason="protoc/protoc-gen-go not installed (make gateway installs them)")
def test_gateway_go_code_is_generated_from_its_proto(tmp_path):
    """The gateway's messages are protoc-gen-go's output for protos/internal/gateway.proto, byte for byte."""
    assert generate.generate_go(tmp_path) == [generate.GO_OUT]
    assert (tmp_path / generate.GO_OUT).read_bytes() == (generate.ROOT / generate.GO_OUT).read_bytes()


def test_the_gateway_protocol_is_internal():
    """Its messages are not part of the public ganserve.v1 package (clients see GeneratorService only)."""
    from protos.internal import gateway_pb2

    assert gateway_pb2.DESCRIPTOR.package == "ganserve.internal"
    assert "BatchItem" not in pb.DESCRIPTOR.message_types_by_name


def test_service_methods():
    service = pb.DESCRIPTOR.services_by_name["GeneratorService"]
    assert service.full_name == "ganserve.v1.GeneratorService"
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"ListModels", "GetModel", "Sample", "SampleConditional", "SampleStream",
                            "Interpolate", "Invert", "EvaluateDivergence"}
    assert methods["SampleStream"].server_streaming and not methods["Sample"].server_streaming
    assert hasattr(pb_grpc, "GeneratorServiceStub") and hasattr(pb_grpc, "add_GeneratorServiceServicer_to_server")


def test_field_names_other_services_rely_on():
    t = pb.Tensor.DESCRIPTOR.fields_by_name
    assert t["shape"].is_repeated and t["shape"].type == t["shape"].TYPE_INT64
    assert t["dtype"].enum_type.name == "DType" and t["data"].type == t["data"].TYPE_BYTES
    assert {"FLOAT32", "UINT8"} <= set(pb.DType.keys())
    for msg in (pb.SampleRequest, pb.SampleConditionalRequest):
        f = msg.DESCRIPTOR.fields_by_name
        assert f["model"].type == f["model"].TYPE_STRING and f["n"].type == f["n"].TYPE_UINT32
        assert f["seed"].type == f["seed"].TYPE_UINT64 and f["seed"].has_presence
    f = pb.SampleConditionalRequest.DESCRIPTOR.fields_by_name
    assert f["labels"].type == f["labels"].TYPE_INT32 and f["labels"].is_repeated
    assert f["soft_labels"].message_type.name == "Tensor"
    r = pb.SampleResponse.DESCRIPTOR.fields_by_name
    assert r["samples"].message_type.name == "Tensor" and "seed" in r
    ds = pb.DataSource.DESCRIPTOR
    assert {f.name for f in ds.oneofs_by_name["source"].fields} == {"samples", "reference", "model"}


def test_every_element_documented(tmp_path):
    """Every message, field, enum, enum value and rpc has a comment in the .proto (other teams read only that)."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp_path / "set.pb"
    assert protoc.main(["protoc", f"-I{generate.ROOT}", "--include_source_info", f"--descriptor_set_out={out}",
                        str(generate.PROTO_DIR / "generator.proto")]) == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (f,) = fds.file
    commented = {tuple(loc.path) for loc in f.source_code_info.location
                 if loc.leading_comments.strip() or loc.trailing_comments.strip()}
    missing = []
    # Paths per descriptor.proto: message_type=4 (field=2, nested enum=4), enum_type=5 (value=2), service=6 (method=2).
    for i, m in enumerate(f.message_type):
        if (4, i) not in commented:
            missing.append(m.name)
        missing += [f"{m.name}.{fld.name}" for j, fld in enumerate(m.field) if (4, i, 2, j) not in commented]
    for i, e in enumerate(f.enum_type):
        if (5, i) not in commented:
            missing.append(e.name)
        missing += [f"{e.name}.{v.name}" for j, v in enumerate(e.value) if (5, i, 2, j) not in commented]
    for i, s in enumerate(f.service):
        missing += [f"{s.name}.{r.name}" for j, r in enumerate(s.method) if (6, i, 2, j) not in commented]
    assert not missing, f"undocumented in the .proto: {missing}"


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    np.arange(10, dtype=np.uint8),
    np.array([-3, 2**40], dtype=np.int64),
    np.zeros((0, 5), dtype=np.float32),
])
def test_tensor_roundtrip(array):
    msg = pb.Tensor.FromString(tensors.from_array(array).SerializeToString())
    out = tensors.to_array(msg)
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_tensor_is_little_endian_row_major():
    msg = tensors.from_array(np.array([[1.0, 2.0]], dtype=np.float32))
    assert msg.data == b"\x00\x00\x80\x3f\x00\x00\x00\x40" and list(msg.shape) == [1, 2]


@pytest.mark.parametrize("msg,field", [
    (pb.Tensor(shape=[2], dtype=pb.DTYPE_UNSPECIFIED, data=b"\0" * 8), "x.dtype"),
    (pb.Tensor(shape=[2], dtype=pb.FLOAT32, data=b"\0" * 7), "x.data"),
    (pb.Tensor(shape=[-1], dtype=pb.FLOAT32, data=b""), "x.shape"),
    (pb.Tensor(shape=[2], dtype=99, data=b"\0" * 8), "x.dtype"),
])
def test_tensor_errors_name_the_field(msg, field):
    with pytest.raises(tensors.TensorError) as err:
        tensors.to_array(msg, "x")
    assert err.value.field == field


def test_tensor_element_limit():
    msg = tensors.from_array(np.zeros(100, np.float32))
    with pytest.raises(tensors.TensorError, match="limit"):
        tensors.to_array(msg, "x", max_elements=99)


def test_messages_roundtrip():
    req = pb.SampleConditionalRequest(model="cgan-mnist@2", n=3, seed=7, labels=[1, 2, 3],
                                      encoding=pb.ENCODING_PNG)
    back = pb.SampleConditionalRequest.FromString(req.SerializeToString())
    assert back == req and back.HasField("seed")
    assert not pb.SampleRequest(n=1).HasField("seed")
    ev = pb.EvaluateDivergenceRequest(p=pb.DataSource(reference="ring8"),
                                      q=pb.DataSource(samples=tensors.from_array(np.zeros((4, 2), np.float32))),
                                      metrics=["w1_exact"])
    assert pb.EvaluateDivergenceRequest.FromString(ev.SerializeToString()).q.WhichOneof("source") == "samples"
