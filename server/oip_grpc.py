"""`inference.GRPCInferenceService`, the Open Inference Protocol (KServe v2) over gRPC, on ganserve's gRPC server.

One thin method per RPC: decode the wire tensors into server.oip's `Input`s, call server/oip.py, build the
reply. The edges are v1's (server/service.py's `unary_rpc`): a client mistake is its chosen status with a
message naming the input ("labels[0]: must be in 0..9, got 12"), anything else INTERNAL with a logged
traceback, never UNKNOWN; every call is counted and timed for Prometheus under its method name. The app
(server/app.py) puts these calls behind the same token check and admission limit as v1's, except ServerLive
and ServerReady, which stay open like the gRPC health service so probes need no secret.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from protos.inference import grpc_predict_v2_pb2 as v2
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from server import oip
from server.config import Config
from server.engine import Call
from server.errors import InvalidArgument
from server.registry import Registry
from server.service import unary_rpc
from server.telemetry import Telemetry

SERVICE = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# InferTensorContents' typed field per datatype (FP16 travels only as raw bytes).
_CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}


def parameters(params) -> dict:
    """A map<string, InferParameter> as plain Python values (an unset value is None)."""
    out = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


def decode_inputs(request: v2.ModelInferRequest) -> list[oip.Input]:
    """The request's input tensors, from raw_input_contents or from each tensor's typed contents. (The checks
    format their message only when they fail: this runs on every request.)"""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"has {len(raw)} entries for {len(request.inputs)} inputs", "raw_input_contents")
    out = []
    for i, t in enumerate(request.inputs):
        field = t.name[:40] or f"inputs[{i}]"
        dtype = oip.NUMPY.get(t.datatype)
        if dtype is None:
            raise InvalidArgument(f"unknown datatype {t.datatype[:20]!r}", f"{field}.datatype")
        shape = list(t.shape)
        count = oip.element_count(shape, field)
        if raw:
            if t.HasField("contents"):
                raise InvalidArgument("give raw_input_contents or contents, not both", f"{field}.contents")
            data = raw[i]
            if len(data) != count * dtype.itemsize:
                raise InvalidArgument(f"has {len(data)} bytes, shape {shape} of {t.datatype} needs "
                                      f"{count * dtype.itemsize}", f"{field}.data")
            array = np.frombuffer(data, dtype)
        else:
            if t.datatype not in _CONTENTS:
                raise InvalidArgument(f"{t.datatype} travels as raw_input_contents only", f"{field}.contents")
            values = getattr(t.contents, _CONTENTS[t.datatype])
            if len(values) != count:
                raise InvalidArgument(f"has {len(values)} values, shape {shape} needs {count}", f"{field}.contents")
            try:
                array = np.array(values, dtype)
            except (OverflowError, ValueError):
                raise InvalidArgument(f"values out of range for {t.datatype}", f"{field}.contents") from None
        out.append(oip.Input(t.name, t.datatype, array.reshape(shape)))
    return out


def _metadata(spec: oip.TensorSpec) -> v2.ModelMetadataResponse.TensorMetadata:
    return v2.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


class InferenceService(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: Registry, config: Config, telemetry: Telemetry, ready: Callable[[], bool]):
        """`ready`: whether the server is ready for inference (models loaded, not draining)."""
        self.registry, self.config, self.telemetry, self._ready = registry, config, telemetry, ready

    @unary_rpc
    def ServerLive(self, request, rpc):
        return v2.ServerLiveResponse(live=True)

    @unary_rpc
    def ServerReady(self, request, rpc):
        return v2.ServerReadyResponse(ready=self._ready())

    @unary_rpc
    def ModelReady(self, request, rpc):
        rpc.model = oip.lookup(self.registry, request.name, request.version)  # callable (loaded on first use)
        return v2.ModelReadyResponse(ready=self._ready())

    @unary_rpc
    def ServerMetadata(self, request, rpc):
        return v2.ServerMetadataResponse(name=oip.SERVER_NAME, version=oip.SERVER_VERSION, extensions=oip.EXTENSIONS)

    @unary_rpc
    def ModelMetadata(self, request, rpc):
        model = oip.resolve(self.registry, request.name, request.version)
        rpc.model = model.ref
        return v2.ModelMetadataResponse(name=model.name, versions=oip.versions(self.registry, model),
                                        platform=oip.PLATFORM, inputs=[_metadata(s) for s in oip.input_specs(model)],
                                        outputs=[_metadata(s) for s in oip.output_specs(model)])

    @unary_rpc
    def ModelInfer(self, request, rpc):
        model = oip.resolve(self.registry, request.model_name, request.model_version)
        rpc.model = model.ref
        params = parameters(request.parameters)
        call = rpc.call
        timeout = oip.deadline(params)
        if timeout is not None:
            call = Call(deadline=min(timeout, call.deadline or timeout), is_active=call.is_active)
        job = oip.prepare(model, decode_inputs(request), params, [o.name for o in request.outputs], self.config)
        reply = v2.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
        for out in oip.run(job, call):
            reply.outputs.add(name=out.name, datatype=out.datatype, shape=out.array.shape)
            reply.raw_output_contents.append(out.array.tobytes())
        return reply
