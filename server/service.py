"""GeneratorService: one thin method per RPC (validate -> plain function -> reply).

The `_rpc` wrapper gives every method the same edges: a ServiceError becomes its chosen status with a
BadRequest field violation; any other exception is logged with its traceback and answered INTERNAL (never
UNKNOWN); each call is counted and timed for Prometheus by method, model and status.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass

import grpc
import numpy as np

from ganserve.store import manifest as mf
from protos import latents as latent_fn
from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from server import divergence, engine, validate
from server.budget import MemoryBudget
from server.config import Config
from server.engine import Call
from server.errors import BadModelOutput, InvalidArgument, ServiceError, require, to_status
from server.model import capabilities
from server.registry import Entry, LoadedModel, Registry
from server.telemetry import Telemetry

log = logging.getLogger("ganserve.service")

_DTYPE = {"float32": pb.FLOAT32, "uint8": pb.UINT8, "int64": pb.INT64}


class CallState:
    """Per-call state the wrapper and the method share: the deadline and liveness (`call`), the resolved model."""

    def __init__(self, context: grpc.ServicerContext, budget: MemoryBudget | None = None):
        left = context.time_remaining()
        deadline = None if left is None or left > 1e7 else time.monotonic() + left
        charge = budget.charge(context) if budget is not None else None
        self.call = Call(deadline=deadline, is_active=context.is_active,
                         **({"reserve": charge.reserve} if charge is not None else {}))
        self.model = ""
        self.cpu0 = time.thread_time()  # the handler thread's CPU at the start (ONNX Runtime runs on it: 1 thread)


_ABANDONED = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def record_call(tel: Telemetry, method: str, rpc: CallState, code: grpc.StatusCode, t0: float) -> None:
    """Count and time one finished call (Prometheus) and, at DEBUG, log it."""
    seconds = time.perf_counter() - t0
    tel.observe_call(method, rpc.model or "-", code.name, seconds)
    deadline = rpc.call.deadline
    late = 0.0 if deadline is None else time.monotonic() - deadline
    if code in _ABANDONED or late > 0:
        # CPU after the deadline, estimated as the time after it times the share of the call's wall time the
        # handler thread was on a CPU (on shared cores the wall time alone overstates it many times)
        cpu0 = getattr(rpc, "cpu0", None)  # (a native front end's batch item has none: its CPU is the batch's)
        busy = 0.0 if cpu0 is None else min(1.0, max(0.0, time.thread_time() - cpu0) / max(seconds, 1e-9))
        tel.abandoned(method, code.name, max(late, 0.0), max(late, 0.0) * busy)
    if log.isEnabledFor(logging.DEBUG):  # one structured access-log line per RPC (json format: fields as keys)
        log.debug("%s %s %s %.1f ms", method, rpc.model or "-", code.name, 1000 * seconds,
                  extra={"method": method, "model": rpc.model, "code": code.name, "ms": round(1000 * seconds, 3)})


def chosen_error(method: str, err: Exception, tel: Telemetry | None = None) -> ServiceError:
    """The ServiceError to answer for `err` (an unexpected one is logged with its traceback -> INTERNAL; a model's
    bad output is logged and counted)."""
    if isinstance(err, BadModelOutput):
        log.error("%s: %s", method, err)
        if tel is not None:
            tel.bad_output(err.model)
        return err
    if not isinstance(err, ServiceError):
        log.error("%s failed with an unexpected error; answering INTERNAL", method, exc_info=err)
        err = ServiceError(f"internal error in {method} ({type(err).__name__}); the server log has the traceback")
    if err.code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.CANCELLED):
        log.warning("%s -> %s: %s", method, err.code.name, err)
    return err


def _rpc(fn):
    method = fn.__name__

    @functools.wraps(fn)
    def unary(self, request, context):
        budget = getattr(self, "budget", None)  # (the v2 InferenceService shares this wrapper, without a budget)
        rpc, t0, code = CallState(context, budget), time.perf_counter(), grpc.StatusCode.OK
        try:
            return fn(self, request, rpc)
        except Exception as e:  # noqa: BLE001 - every failure becomes a chosen status
            err = chosen_error(method, e, self.telemetry)
            code = err.code
            context.abort_with_status(to_status(err))
        finally:
            record_call(self.telemetry, method, rpc, code, t0)

    return unary


unary_rpc = _rpc  # the same edges for the Open Inference Protocol's service (server/oip_grpc.py)


def _rpc_stream(fn):
    method = fn.__name__

    @functools.wraps(fn)
    def streaming(self, request, context):
        budget = getattr(self, "budget", None)  # (the v2 InferenceService shares this wrapper, without a budget)
        rpc, t0, code = CallState(context, budget), time.perf_counter(), grpc.StatusCode.OK
        lifetime = time.monotonic() + self.config.max_stream_s  # a stream's deadline is at most max_stream_s away
        if rpc.call.deadline is None or rpc.call.deadline > lifetime:
            rpc.call = dataclasses.replace(rpc.call, deadline=lifetime)
        try:
            yield from fn(self, request, rpc)
        except GeneratorExit:  # the client went away: stop producing
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:  # noqa: BLE001
            err = chosen_error(method, e, self.telemetry)
            code = err.code
            context.abort_with_status(to_status(err))
        finally:
            record_call(self.telemetry, method, rpc, code, t0)

    return streaming


@dataclass
class SampleJob:
    """A checked Sample/SampleConditional request: the model, how to reply, and the model's inputs."""
    model: LoadedModel
    request: pb.SampleRequest | pb.SampleConditionalRequest
    encoding: int
    seed: int
    z: np.ndarray
    y: np.ndarray | None


def _tensor(array: np.ndarray | None) -> pb.Tensor | None:
    return None if array is None else tensors.from_array(array)


EVALUATOR_INPUT_RANGE = (0.0, 1.0)  # an evaluator classifies images in [0, 1] (server/divergence.py)

_STATE = {"READY": pb.VERSION_STATE_READY, "UNAVAILABLE": pb.VERSION_STATE_UNAVAILABLE,
          "CANDIDATE": pb.VERSION_STATE_CANDIDATE, "RETIRED": pb.VERSION_STATE_RETIRED}


def model_info(entry: Entry, registry: Registry) -> pb.ModelInfo:
    """A version's ModelInfo from the index (no load needed); only name, version and state when it has no
    valid manifest."""
    siblings = registry.entries(entry.name)
    default = registry.default_version(entry.name)
    index = dict(state=_STATE[entry.state], state_reason=entry.reason, is_default=entry.version == default,
                 resident=entry.model is not None,
                 versions=[pb.VersionStatus(version=e.version, state=_STATE[e.state], reason=e.reason,
                                            resident=e.model is not None, is_default=e.version == default)
                           for e in siblings],
                 available_versions=[e.version for e in siblings if e.state in ("READY", "CANDIDATE")])
    m = entry.manifest
    if m is None:
        return pb.ModelInfo(name=entry.name, version=entry.version, **index)
    role = "classifier" if m["kind"] == "evaluator" else "generator"
    vr = m["output"].get("value_range") or (0.0, 0.0)
    shape = list(m["output"]["shape"])
    if m["kind"] == "evaluator":  # data_kind, output_shape and the range describe the data it classifies (the
        shape = list(m["graphs"]["classifier"]["inputs"][0]["dims"])  # proto's IMAGE: [C, H, W]), not its logits
        vr = EVALUATOR_INPUT_RANGE if m["data_kind"] == "image" else (0.0, 0.0)
    return pb.ModelInfo(
        precision=mf.precision(m), derived_from=m.get("derived_from", 0),
        name=entry.name, version=entry.version, kind=m["kind"], description=str(m.get("description", "")),
        data_kind=pb.IMAGE if m["data_kind"] == "image" else pb.POINTS, latent_dim=int(m["latent_dim"]),
        num_classes=int(m["num_classes"]), class_names=[str(c) for c in m.get("class_names", [])],
        output_shape=shape, value_min=vr[0], value_max=vr[1],
        capabilities=pb.Capabilities(**capabilities(m)),
        metrics={k: float(v) for k, v in (m.get("metrics") or {}).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)},
        created=str(m.get("created", "")),
        inputs=[pb.TensorSpec(name=s["name"], dtype=_DTYPE[s["dtype"]], dims=s["dims"]) for s in m["graphs"][role]["inputs"]],
        max_batch_size=int(m["max_batch_size"]), **index)


class GeneratorService(pb_grpc.GeneratorServiceServicer):
    def __init__(self, registry: Registry, config: Config, telemetry: Telemetry,
                 budget: MemoryBudget | None = None):
        self.registry, self.config, self.telemetry, self.budget = registry, config, telemetry, budget

    # -- helpers ------------------------------------------------------------------------------------------
    def _generator(self, ref: str, rpc: CallState | None, *, conditional: bool | None, data_kind: str | None = "image",
                   field: str = "model") -> LoadedModel:
        """The model a request names (or the default one), checked to be a generator of the right kind."""
        if ref:
            model = self.registry.resolve(ref, field)
        else:
            model = self.registry.default(conditional=bool(conditional), data_kind=data_kind)
        if rpc is not None:
            rpc.model = model.ref
        require(not model.is_evaluator, field, f"{model.ref} is an evaluator (classifier), not a generator")
        if conditional is True:
            require(model.conditional, field, f"{model.ref} is unconditional (kind {model.kind}): use Sample")
        elif conditional is False:
            require(not model.conditional, field,
                    f"{model.ref} is conditional (kind {model.kind}): use SampleConditional with labels")
        return model

    def _latents(self, request, model: LoadedModel) -> tuple[np.ndarray, int]:
        if tensors.is_set(request.latents):
            return validate.latents(request.latents, model, self.config.max_samples,
                                    bound=self.config.max_latent_abs), 0
        n = validate.count(request.n, self.config.max_samples)
        seed = validate.seed(request.HasField("seed"), request.seed)
        trunc = validate.truncation(request.truncation)
        return latent_fn.latents(seed, n, model.latent_dim, truncation=trunc), seed

    # -- RPCs ---------------------------------------------------------------------------------------------
    @_rpc
    def ListModels(self, request, rpc):
        """The default version of each model; every callable version (all_versions); or every version in the
        store whatever its state (index)."""
        entries = self.registry.entries()
        if request.index:
            chosen = entries
        elif request.all_versions:
            chosen = [e for e in entries if e.state in ("READY", "CANDIDATE")]
        else:
            chosen = [e for e in entries if e.version == self.registry.default_version(e.name)]
        return pb.ListModelsResponse(models=[model_info(e, self.registry) for e in chosen])

    @_rpc
    def GetModel(self, request, rpc):
        require(bool(request.model), "model", "name a model (name or name@version)")
        entry = self.registry.lookup(request.model)
        rpc.model = entry.ref
        return model_info(entry, self.registry)

    def prepare_sample(self, request, rpc: CallState, *, conditional: bool) -> SampleJob:
        """A Sample (or SampleConditional) request checked and turned into the model's inputs."""
        model = self._generator(request.model, rpc, conditional=conditional,
                                data_kind=None if request.model else "image")
        encoding = validate.encoding(model, request.encoding)
        z, seed = self._latents(request, model)
        y = validate.labels(model, request.labels, request.soft_labels, len(z)) if conditional else None
        return SampleJob(model, request, encoding, seed, z, y)

    def sample_reply(self, job: SampleJob, x: np.ndarray, *, clean: bool = False) -> pb.SampleResponse:
        """The reply to `job` given the generator's output rows `x` (`clean`: see engine.encode)."""
        samples, pngs = engine.encode(job.model, x, job.encoding, clean=clean)
        return pb.SampleResponse(model=job.model.ref, seed=job.seed, samples=_tensor(samples), png=pngs,
                                 latents=_tensor(job.z) if job.request.return_latents else None,
                                 conditions=_tensor(job.y))

    @_rpc
    def Sample(self, request, rpc):
        job = self.prepare_sample(request, rpc, conditional=False)
        return self.sample_reply(job, engine.generate(job.model, job.z, job.y, rpc.call))

    @_rpc
    def SampleConditional(self, request, rpc):
        job = self.prepare_sample(request, rpc, conditional=True)
        return self.sample_reply(job, engine.generate(job.model, job.z, job.y, rpc.call))

    @_rpc_stream
    def SampleStream(self, request, rpc):
        wants_labels = bool(request.labels) or tensors.is_set(request.soft_labels)
        model = self._generator(request.model, rpc, conditional=None if request.model else wants_labels,
                                data_kind=None if request.model else "image")
        encoding = validate.encoding(model, request.encoding)
        n = validate.count(request.n, self.config.max_stream_samples)
        require(request.offset <= latent_fn.MAX_SEED - n, "offset", f"offset + n must fit in 64 bits, got {request.offset}")
        seed = validate.seed(request.HasField("seed"), request.seed)
        trunc = validate.truncation(request.truncation)
        chunk = min(request.chunk_size or self.config.stream_chunk, self.config.max_stream_chunk)
        y = validate.labels(model, request.labels, request.soft_labels, n, expand=False)
        chunks = self.telemetry.chunks.labels(model.ref)
        for start, s in engine.stream(model, seed=seed, n=n, offset=request.offset, chunk=chunk, truncation=trunc,
                                      y=y, call=rpc.call, on_chunk=chunks.inc):
            samples, pngs = engine.encode(model, s.x, encoding)
            yield pb.SampleChunk(model=model.ref, seed=seed, start=start, samples=_tensor(samples), png=pngs,
                                 latents=_tensor(s.z) if request.return_latents else None, conditions=_tensor(s.y))

    @_rpc
    def Interpolate(self, request, rpc):
        model = self._generator(request.model, rpc, conditional=None, data_kind=None if request.model else "image")
        cfg = self.config
        encoding = validate.encoding(model, request.encoding)
        k = len(request.endpoints)
        require(2 <= k <= cfg.max_endpoints, "endpoints", f"give 2..{cfg.max_endpoints} endpoints, got {k}")
        require(2 <= request.steps <= cfg.max_steps, "steps", f"must be in 2..{cfg.max_steps}, got {request.steps}")
        points = (k - 1) * (request.steps - 1) + 1
        require(points <= cfg.max_samples, "steps",
                f"the path would have {points} points, more than the limit of {cfg.max_samples}")
        require(request.method in pb.InterpolationMethod.values(), "method", f"unknown method {request.method}")
        method = "linear" if request.method == pb.LINEAR else "slerp"
        zs, ys = [], []
        for i, ep in enumerate(request.endpoints):
            f = f"endpoints[{i}]"
            y = validate.labels(model, [ep.label] if ep.HasField("label") else [], ep.soft_label, 1,
                                prefix=f + ".", soft_name="soft_label", hard_name="label")
            if y is not None:
                ys.append(y[0])
            which = ep.WhichOneof("point")
            if which == "seed":
                zs.append(latent_fn.latents(ep.seed, 1, model.latent_dim)[0])
            elif which == "latent":
                z = validate.float_tensor(ep.latent, f + ".latent", max_elements=model.latent_dim)
                require(z.shape in ((model.latent_dim,), (1, model.latent_dim)), f + ".latent.shape",
                        f"must be [{model.latent_dim}] or [1, {model.latent_dim}], got {list(z.shape)}")
                zs.append(validate.bounded(z, f + ".latent", cfg.max_latent_abs).reshape(-1))
            elif which == "image":
                x = validate.images(ep.image, model, 1, f + ".image", single=True)
                inv_method = validate.inversion_method(model, pb.INVERSION_METHOD_UNSPECIFIED, f + ".image")
                inv = engine.invert(model, x, None if y is None else y[:1], inv_method, steps=None, lr=None,
                                    prior_weight=None, call=rpc.call)
                zs.append(inv.z[0])
            else:
                raise InvalidArgument("give a seed, a latent or an image", f)
        s, t = engine.interpolate(model, np.stack(zs), np.stack(ys) if ys else None, request.steps, method, rpc.call)
        samples, pngs = engine.encode(model, s.x, encoding)
        return pb.InterpolateResponse(model=model.ref, samples=_tensor(samples), png=pngs, latents=_tensor(s.z),
                                      conditions=_tensor(s.y), t=t.tolist())

    @_rpc
    def Invert(self, request, rpc):
        model = self._generator(request.model, rpc, conditional=None, data_kind=None if request.model else "image")
        cfg = self.config
        encoding = validate.encoding(model, request.encoding)
        method = validate.inversion_method(model, request.method)
        require(tensors.is_set(request.images), "images", "send at least one image")
        x = validate.images(request.images, model, cfg.max_images)
        require(request.steps <= cfg.max_invert_steps, "steps",
                f"must be at most {cfg.max_invert_steps} (the server's limit), got {request.steps}")
        lr = validate.finite_float(request.learning_rate, "learning_rate")
        prior = validate.finite_float(request.prior_weight, "prior_weight")
        if model.conditional and not request.labels:
            y = engine.guess_labels(self.registry, model, x)
        else:
            y = validate.labels(model, request.labels, pb.Tensor(), len(x))
        inv = engine.invert(model, x, y, method, steps=request.steps or None, lr=lr or None,
                            prior_weight=prior or None, call=rpc.call)
        recon, pngs = engine.encode(model, inv.reconstruction, encoding)
        return pb.InvertResponse(model=model.ref, method=pb.InversionMethod.Value(inv.method), latents=_tensor(inv.z),
                                 reconstructions=_tensor(recon), png=pngs, mse=inv.mse.tolist(), steps=inv.steps)

    @_rpc
    def EvaluateDivergence(self, request, rpc):
        result = divergence.evaluate(request, self.registry, self.config, rpc.call, sample=self._eval_samples)
        rpc.model = result.model_label
        return result.reply

    def _eval_samples(self, ref: str, labels: list[int], truncation: float, n: int, seed: int, call: Call,
                      field: str) -> tuple[LoadedModel, np.ndarray, np.ndarray | None]:
        """n samples of a model for EvaluateDivergence: (model, x, labels used or None)."""
        require(bool(ref), field, "name a model")
        model = self._generator(ref, None, conditional=None, data_kind=None, field=field)
        trunc = validate.truncation(truncation, field.rsplit(".", 1)[0] + ".truncation")
        z = latent_fn.latents(seed, n, model.latent_dim, truncation=trunc)
        y, classes = None, None
        if model.conditional:
            if labels:
                y = validate.labels(model, labels, pb.Tensor(), n, prefix=field.rsplit(".", 1)[0] + ".")
            else:  # uniform over classes, in a fixed order
                y = np.eye(model.num_classes, dtype=np.float32)[np.arange(n) % model.num_classes]
            classes = y.argmax(1)
        elif labels:
            raise InvalidArgument(f"{model.ref} is unconditional; send no labels", field.rsplit(".", 1)[0] + ".labels")
        x = engine.check_output(model, engine.generate(model, z, y, call))
        return model, x, classes

