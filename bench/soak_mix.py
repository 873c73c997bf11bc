"""What the soak's clients send (bench/soak.py): every RPC, deliberate mistakes, and hostile requests, each
with the statuses it may get.

Hostile requests (a client that knows only the server's reflection could send them):
    latents 3e38            Sample with explicit latents far beyond max_latent_abs -> INVALID_ARGUMENT
    1e20-scaled upload      EvaluateDivergence on 200 2-D points, half scaled by 1e20, against the unscaled
                            ones (frechet, kid or sliced_w) -> OK with no NaN, or INVALID_ARGUMENT
    Invert 0.5 s deadline   OPTIMIZE on 32 images x 500 steps (~25 s of work) with a 0.5 s deadline ->
                            DEADLINE_EXCEEDED; the server's ganserve_seconds_after_deadline_total says how
                            long handlers ran past their deadlines
    7.5 MiB bad latents     a Sample whose latents tensor is 7.5 MiB of the wrong shape -> INVALID_ARGUMENT,
                            or RESOURCE_EXHAUSTED when the memory budget is full
    unread stream           a SampleStream the client does not read for 2 s, then cancels -> CANCELLED (or
                            RESOURCE_EXHAUSTED when streams hold their share of the slots)
    undecodable bytes       bytes that are no SampleRequest -> INVALID_ARGUMENT
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb

DEADLINE_S = 30.0
EXPECTED_BAD = {"n=0": "INVALID_ARGUMENT", "label out of range": "INVALID_ARGUMENT",
                "unknown model": "NOT_FOUND", "path in model name": "INVALID_ARGUMENT"}
UNREAD_S = 2.0


@dataclass(frozen=True)
class Req:
    """One call: a label for the report, the method, the request (bytes for `raw`), the statuses it may get,
    its deadline, and how to make it: "call", "raw" (serialized bytes sent as they are) or "unread" (a stream
    that is not read for UNREAD_S, then cancelled)."""
    label: str
    method: str
    request: object
    expected: frozenset
    timeout: float = DEADLINE_S
    how: str = "call"


def _ok(label: str, method: str, request) -> Req:
    return Req(label, method, request, frozenset({"OK"}))


def discover(target: str) -> dict:
    """Roles -> model names, from ListModels: what the mix can use on this store."""
    import grpc

    from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        models = pb_grpc.GeneratorServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=10).models
    gens = [m for m in models if m.kind != "evaluator"]
    images = [m for m in gens if m.data_kind == pb.IMAGE]
    pick = lambda ms: ms[0].name if ms else None  # noqa: E731
    inv = [m for m in images if m.capabilities.invertible or m.capabilities.optimizable]
    return {
        "unconditional": [m.name for m in images if not m.capabilities.conditional],
        "conditional": [m.name for m in images if m.capabilities.conditional],
        "points": pick([m for m in gens if m.data_kind == pb.POINTS and not m.capabilities.conditional]),
        "invertible": [{"name": m.name, "conditional": m.capabilities.conditional,
                        "methods": [k for k, ok in (("ENCODER", m.capabilities.invertible),
                                                    ("OPTIMIZE", m.capabilities.optimizable),
                                                    ("HYBRID", m.capabilities.invertible and m.capabilities.optimizable))
                                    if ok]} for m in inv],
        "all": [m.name for m in models],
        "num_classes": {m.name: m.num_classes for m in gens},
        "latent_dim": {m.name: m.latent_dim for m in gens},
        "evaluate_p": "mnist-test",
    }


# Streams of 2-4 chunks. Sized to the machine: chunks are bulk work that yields to interactive requests, and in a
# closed loop of 64 clients the long calls accumulate clients (Little's law): with 256-1024 samples, about 44 of
# the 64 clients sat in streams sharing ~2,300 samples/s on 2 cores, so a 1,024-sample stream took 12 s at the
# median and reached the client's 30 s deadline in the tail: capacity, not a wrong status. The soak hunts wrong
# statuses; bench/ measures throughput.
STREAM_SIZES, STREAM_CHUNK = (128, 256, 512), 128


class Mix:
    """Random requests of every RPC for one client thread (its own seeded RNG)."""

    def __init__(self, roles: dict, images: dict, seed: int, *, hostile: bool = True):
        self.roles, self.images = roles, images
        self.rng = random.Random(seed)
        weights = {"Sample": 28, "SampleConditional": 18 if roles["conditional"] else 0, "SampleStream": 8,
                   "Interpolate": 10, "Invert": 8 if roles["invertible"] else 0, "EvaluateDivergence": 2,
                   "ListModels": 4, "GetModel": 4, "bad": 8, "hostile": 6 if hostile else 0}
        self.kinds = [k for k, w in weights.items() if w]
        self.weights = [weights[k] for k in self.kinds]
        self._optimizable = [m for m in roles["invertible"] if "OPTIMIZE" in m["methods"] and not m["conditional"]]

    def _seed(self) -> int:
        return self.rng.getrandbits(62)

    def next(self, kind: str | None = None) -> Req:
        kind = kind or self.rng.choices(self.kinds, self.weights)[0]
        return getattr(self, "_" + kind.lower())()

    # -- the ordinary mix ---------------------------------------------------------------------------------
    def _sample(self) -> Req:
        r, roles = self.rng, self.roles
        model = roles["points"] if roles["points"] and r.random() < 0.15 else r.choice(roles["unconditional"])
        enc = pb.ENCODING_FLOAT32 if model == roles["points"] else r.choice(
            [pb.ENCODING_FLOAT32, pb.ENCODING_UINT8, pb.ENCODING_PNG])
        return _ok("Sample", "Sample", pb.SampleRequest(model=model, n=r.randint(1, 16), seed=self._seed(), encoding=enc))

    def _sampleconditional(self) -> Req:
        r = self.rng
        model = r.choice(self.roles["conditional"])
        k, n = self.roles["num_classes"][model], r.randint(1, 16)
        if r.random() < 0.3:
            soft = np.random.default_rng(self._seed()).dirichlet(np.ones(k)).astype(np.float32)[None]
            req = pb.SampleConditionalRequest(model=model, n=n, seed=self._seed(), soft_labels=tensors.from_array(soft))
        else:
            req = pb.SampleConditionalRequest(model=model, n=n, seed=self._seed(),
                                              labels=[r.randrange(k) for _ in range(r.choice([1, n]))])
        return _ok("SampleConditional", "SampleConditional", req)

    def _samplestream(self) -> Req:
        return _ok("SampleStream", "SampleStream", pb.SampleStreamRequest(
            model=self.rng.choice(self.roles["unconditional"]), n=self.rng.choice(STREAM_SIZES),
            seed=self._seed(), chunk_size=STREAM_CHUNK, encoding=pb.ENCODING_UINT8))

    def _interpolate(self) -> Req:
        r, roles = self.rng, self.roles
        method = r.choice([pb.LINEAR, pb.SLERP])
        inv = roles["invertible"]
        if inv and r.random() < 0.3:
            m = r.choice(inv)
            a, b = self.images[m["name"]][:2]
            ends = [pb.Endpoint(image=tensors.from_array(a)), pb.Endpoint(image=tensors.from_array(b))]
            if m["conditional"]:
                for ep in ends:
                    ep.label = r.randrange(roles["num_classes"][m["name"]])
            return _ok("Interpolate(images)", "Interpolate",
                       pb.InterpolateRequest(model=m["name"], endpoints=ends, steps=8, method=method))
        ends = [pb.Endpoint(seed=self._seed()) for _ in range(r.randint(2, 4))]
        return _ok("Interpolate", "Interpolate", pb.InterpolateRequest(
            model=r.choice(roles["unconditional"]), endpoints=ends, steps=8, method=method))

    def _invert(self) -> Req:
        r = self.rng
        m = r.choice(self.roles["invertible"])
        method = r.choice(m["methods"])
        x = self.images[m["name"]][: r.randint(1, 4)]
        req = pb.InvertRequest(model=m["name"], images=tensors.from_array(x), method=pb.InversionMethod.Value(method),
                               steps=20)
        if m["conditional"]:
            req.labels.extend([r.randrange(self.roles["num_classes"][m["name"]]) for _ in range(len(x))])
        return _ok(f"Invert({method})", "Invert", req)

    def _evaluatedivergence(self) -> Req:
        roles = self.roles
        model = self.rng.choice([*roles["unconditional"], *roles["conditional"]])
        p = (pb.DataSource(reference=roles["evaluate_p"]) if roles["evaluate_p"]
             else pb.DataSource(model=pb.ModelSource(model=roles["unconditional"][0])))
        return _ok("EvaluateDivergence", "EvaluateDivergence", pb.EvaluateDivergenceRequest(
            p=p, q=pb.DataSource(model=pb.ModelSource(model=model)), metrics=["tv", "js"], n=200, seed=self._seed(),
            bootstrap=10))

    def _listmodels(self) -> Req:
        return _ok("ListModels", "ListModels", pb.ListModelsRequest())

    def _getmodel(self) -> Req:
        return _ok("GetModel", "GetModel", pb.GetModelRequest(model=self.rng.choice(self.roles["all"])))

    def _bad(self) -> Req:
        roles = self.roles
        what = self.rng.choice(sorted(EXPECTED_BAD))
        if what == "n=0":
            req, method = pb.SampleRequest(model=roles["unconditional"][0], n=0), "Sample"
        elif what == "label out of range" and roles["conditional"]:
            req, method = pb.SampleConditionalRequest(model=roles["conditional"][0], n=2, labels=[99]), \
                "SampleConditional"
        elif what == "unknown model":
            req, method = pb.SampleRequest(model="no-such-model", n=1), "Sample"
        else:
            what = "path in model name"
            req, method = pb.SampleRequest(model="../../etc/passwd", n=1), "Sample"
        return Req(f"bad: {what}", method, req, frozenset({EXPECTED_BAD[what]}))

    # -- hostile requests (the module docstring) ----------------------------------------------------------
    def _hostile(self) -> Req:
        kinds = ["latents 3e38", "1e20-scaled upload", "7.5 MiB bad latents", "unread stream", "undecodable bytes"]
        if self._optimizable:
            kinds.append("Invert 0.5 s deadline")
        what = self.rng.choice(kinds)
        model = self.rng.choice(self.roles["unconditional"])
        label = f"hostile: {what}"
        if what == "latents 3e38":
            z = np.full((1, self.roles["latent_dim"][model]), 3e38, np.float32)
            return Req(label, "Sample", pb.SampleRequest(model=model, latents=tensors.from_array(z)),
                       frozenset({"INVALID_ARGUMENT"}))
        if what == "1e20-scaled upload":
            pts = np.random.default_rng(self._seed()).normal(size=(200, 2)).astype(np.float32)
            scaled = pts.copy()
            scaled[:100] *= 1e20
            request = pb.EvaluateDivergenceRequest(
                p=pb.DataSource(samples=tensors.from_array(scaled)), q=pb.DataSource(samples=tensors.from_array(pts)),
                metrics=[self.rng.choice(["frechet", "kid", "sliced_w"])], n=200, bootstrap=10, seed=self._seed())
            return Req(label, "EvaluateDivergence", request, frozenset({"OK", "INVALID_ARGUMENT"}))
        if what == "7.5 MiB bad latents":
            z = np.zeros((7 * (1 << 18) + (1 << 17), 1), np.float32)  # 7.5 MiB, shape [n, 1]: wrong
            return Req(label, "Sample", pb.SampleRequest(model=model, latents=tensors.from_array(z)),
                       frozenset({"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}))
        if what == "unread stream":
            return Req(label, "SampleStream", pb.SampleStreamRequest(model=model, n=10**6, seed=self._seed(),
                                                                     chunk_size=4096),
                       frozenset({"CANCELLED", "RESOURCE_EXHAUSTED"}), how="unread")
        if what == "undecodable bytes":
            return Req(label, "Sample", b"\xff\xff\xff\xff", frozenset({"INVALID_ARGUMENT"}), how="raw")
        m = self.rng.choice(self._optimizable)
        x = np.concatenate([self.images[m["name"]]] * 8)[:32]
        return Req(label, "Invert", pb.InvertRequest(model=m["name"], images=tensors.from_array(x), method=pb.OPTIMIZE,
                                                     steps=500), frozenset({"DEADLINE_EXCEEDED"}), timeout=0.5)
