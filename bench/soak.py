"""Soak and overload of a real `python -m server` over loopback. Bounded in time: every
phase has a fixed length, a watchdog stops everything after --max-seconds, and the server is stopped with
SIGTERM at the end (its exit status is reported).

    python -m bench.soak [--store model_store] [--clients 64] [--duration 60] [--json docs/soak.json]
    python -m bench.soak --quick          # 8 clients, short phases: a check that the script works

Phases:
1. prime: one call of every RPC, so one-time costs (the evaluator, MNIST for a reference) are paid up front;
2. warm-up (--warmup s) of the mix below; then the server's RSS (whole process tree) is taken;
3. soak: --clients concurrent clients (threads spread over --procs client processes, one HTTP/2 connection
   per 8 threads) for --duration s, each sending, back to back and with a 30 s deadline, a random mix of every
   RPC: Sample (float32/uint8/PNG), SampleConditional (hard and soft labels), SampleStream, Interpolate
   (seeds, and images when a model can be inverted), Invert (each method the model supports, 20 steps),
   EvaluateDivergence (small n), ListModels, GetModel, and deliberate mistakes (n = 0, a label out of range,
   an unknown model, a path in the model name) that must get their specific status. Any other status is an
   unexpected error. Server RSS is sampled every second; the RSS after the soak is compared with after
   the warm-up (a leak shows as growth; the target is within 10%).
4. overload, on a second server started with a lower admission limit (--overload-limit, so that a few
   hundred client threads are enough to overload it on a small machine): first the admitted throughput with
   as many clients as it admits (Sample n=8), then --overload-factor times as many for the same time. A refused client waits
   20 ms before its next call, as a client with a small backoff would (without it the refused clients
   spin and take the 2 cores from the server). Reported: how fast refusals come back (they must be
   RESOURCE_EXHAUSTED within milliseconds, not timeouts), the admitted throughput against the first
   figure, and a health probe every 100 ms from another connection (must stay SERVING).
5. SIGTERM, after each phase: the server must drain and exit 0.

The soak server runs with the defaults of `python -m server` (max_concurrent_rpcs 128 > 64 clients).

Prints a markdown table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.servers import Ganserve, tree_usage

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 30.0
BACKOFF_S = 0.02
EXPECTED_BAD = {"n=0": "INVALID_ARGUMENT", "label out of range": "INVALID_ARGUMENT",
                "unknown model": "NOT_FOUND", "path in model name": "INVALID_ARGUMENT"}


# -- what to call -----------------------------------------------------------------------------------------

def discover(target: str) -> dict:
    """Roles -> model names, from ListModels: what the mix can use on this store."""
    import grpc

    from protos.ganserve.v1 import generator_pb2 as pb
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
        "evaluate_p": "mnist-test",
    }


class Mix:
    """Random requests of every RPC for one client thread (its own seeded RNG)."""

    def __init__(self, roles: dict, images: dict, seed: int):
        from protos import tensors
        from protos.ganserve.v1 import generator_pb2 as pb

        self.pb, self.tensors, self.roles, self.images = pb, tensors, roles, images
        self.rng = random.Random(seed)
        weights = {"Sample": 28, "SampleConditional": 18 if roles["conditional"] else 0, "SampleStream": 8,
                   "Interpolate": 10, "Invert": 8 if roles["invertible"] else 0, "EvaluateDivergence": 2,
                   "ListModels": 4, "GetModel": 4, "bad": 8}
        self.kinds = [k for k, w in weights.items() if w]
        self.weights = [weights[k] for k in self.kinds]

    def _seed(self) -> int:
        return self.rng.getrandbits(62)

    def next(self, kind: str | None = None) -> tuple[str, str, object, str]:
        """(label for the report, RPC method, request, expected status name)."""
        pb, r = self.pb, self.rng
        kind = kind or r.choices(self.kinds, self.weights)[0]
        roles = self.roles
        if kind == "Sample":
            model = roles["points"] if roles["points"] and r.random() < 0.15 else r.choice(roles["unconditional"])
            enc = pb.ENCODING_FLOAT32 if model == roles["points"] else r.choice(
                [pb.ENCODING_FLOAT32, pb.ENCODING_UINT8, pb.ENCODING_PNG])
            return kind, kind, pb.SampleRequest(model=model, n=r.randint(1, 16), seed=self._seed(), encoding=enc), "OK"
        if kind == "SampleConditional":
            model = r.choice(roles["conditional"])
            k, n = roles["num_classes"][model], r.randint(1, 16)
            if r.random() < 0.3:
                soft = np.random.default_rng(self._seed()).dirichlet(np.ones(k)).astype(np.float32)[None]
                req = pb.SampleConditionalRequest(model=model, n=n, seed=self._seed(),
                                                  soft_labels=self.tensors.from_array(soft))
            else:
                req = pb.SampleConditionalRequest(model=model, n=n, seed=self._seed(),
                                                  labels=[r.randrange(k) for _ in range(r.choice([1, n]))])
            return kind, kind, req, "OK"
        if kind == "SampleStream":
            return kind, kind, pb.SampleStreamRequest(model=r.choice(roles["unconditional"]), n=r.choice([256, 512, 1024]),
                                                      seed=self._seed(), chunk_size=256,
                                                      encoding=pb.ENCODING_UINT8), "OK"
        if kind == "Interpolate":
            method = r.choice([pb.LINEAR, pb.SLERP])
            inv = roles["invertible"]
            if inv and r.random() < 0.3:
                m = r.choice(inv)
                a, b = self.images[m["name"]][:2]
                ends = [pb.Endpoint(image=self.tensors.from_array(a)), pb.Endpoint(image=self.tensors.from_array(b))]
                if m["conditional"]:
                    for ep in ends:
                        ep.label = r.randrange(roles["num_classes"][m["name"]])
                return "Interpolate(images)", kind, pb.InterpolateRequest(model=m["name"], endpoints=ends, steps=8,
                                                                          method=method), "OK"
            ends = [pb.Endpoint(seed=self._seed()) for _ in range(r.randint(2, 4))]
            return kind, kind, pb.InterpolateRequest(model=r.choice(roles["unconditional"]), endpoints=ends, steps=8,
                                                     method=method), "OK"
        if kind == "Invert":
            m = r.choice(roles["invertible"])
            method = r.choice(m["methods"])
            x = self.images[m["name"]][: r.randint(1, 4)]
            req = pb.InvertRequest(model=m["name"], images=self.tensors.from_array(x),
                                   method=pb.InversionMethod.Value(method), steps=20)
            if m["conditional"]:
                req.labels.extend([r.randrange(roles["num_classes"][m["name"]]) for _ in range(len(x))])
            return f"Invert({method})", kind, req, "OK"
        if kind == "EvaluateDivergence":
            model = r.choice([*roles["unconditional"], *roles["conditional"]])
            p = (pb.DataSource(reference=roles["evaluate_p"]) if roles["evaluate_p"]
                 else pb.DataSource(model=pb.ModelSource(model=roles["unconditional"][0])))
            return kind, kind, pb.EvaluateDivergenceRequest(p=p, q=pb.DataSource(model=pb.ModelSource(model=model)),
                                                            metrics=["tv", "js"], n=200, seed=self._seed(),
                                                            bootstrap=10), "OK"
        if kind == "ListModels":
            return kind, kind, pb.ListModelsRequest(), "OK"
        if kind == "GetModel":
            return kind, kind, pb.GetModelRequest(model=r.choice(roles["all"])), "OK"
        what = r.choice(sorted(EXPECTED_BAD))
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
        return f"bad: {what}", method, req, EXPECTED_BAD[what]


# -- client processes -------------------------------------------------------------------------------------

def _channels(target: str, threads: int):
    import grpc

    from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc

    opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(target, options=opts) for _ in range(max(1, (threads + 7) // 8))]
    return channels, [pb_grpc.GeneratorServiceStub(c) for c in channels]


def _call(stub, method: str, request, timeout: float) -> tuple[str, int]:
    """(status name, response messages) of one call; never raises for an RPC failure."""
    import grpc

    try:
        if method == "SampleStream":
            count = 0
            for _ in getattr(stub, method)(request, timeout=timeout):
                count += 1
            return "OK", count
        getattr(stub, method)(request, timeout=timeout)
        return "OK", 1
    except grpc.RpcError as e:
        return e.code().name, 0


def _run_threads(client, job: dict, channels) -> None:
    """client(i) on job["threads"] threads until they finish (each stops by job["stop_at"]), then close."""
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(job["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(job["stop_at"] - time.time() + DEADLINE_S + 5)
    for c in channels:
        c.close()


def mix_worker(job: dict) -> dict:
    """One client process: `threads` clients sending the mix back to back until `stop_at` (wall clock);
    records calls that end after `record_from`."""
    channels, stubs = _channels(job["target"], job["threads"])
    images = {k: np.asarray(v, np.float32) for k, v in job["images"].items()}
    out: dict[str, dict] = {}
    unexpected: list[str] = []
    lock = threading.Lock()

    def client(i: int):
        mix = Mix(job["roles"], images, seed=job["seed"] * 1000 + i)
        stub = stubs[i % len(stubs)]
        while time.time() < job["stop_at"]:
            label, method, request, expected = mix.next()
            t0 = time.perf_counter()
            code, _ = _call(stub, method, request, DEADLINE_S)
            ms = 1000 * (time.perf_counter() - t0)
            if time.time() < job["record_from"]:
                continue
            with lock:
                rec = out.setdefault(label, {"ms": [], "codes": {}})
                rec["ms"].append(round(ms, 3))
                rec["codes"][code] = rec["codes"].get(code, 0) + 1
                if code != expected and len(unexpected) < 50:
                    unexpected.append(f"{label}: {code} (expected {expected})")

    _run_threads(client, job, channels)
    return {"by_label": out, "unexpected": unexpected}


def sample_worker(job: dict) -> dict:
    """One client process of the overload phases: Sample n=8 back to back; a refused client waits BACKOFF_S."""
    from protos.ganserve.v1 import generator_pb2 as pb

    channels, stubs = _channels(job["target"], job["threads"])
    ok_ms, refused_ms, other = [], [], {}
    lock = threading.Lock()

    def client(i: int):
        stub = stubs[i % len(stubs)]
        seed = job["seed"] * 100_000 + i * 10_000
        while time.time() < job["stop_at"]:
            seed += 1
            t0 = time.perf_counter()
            code, _ = _call(stub, "Sample", pb.SampleRequest(model=job["model"], n=8, seed=seed), DEADLINE_S)
            ms = 1000 * (time.perf_counter() - t0)
            record = time.time() >= job["record_from"]
            with lock:
                if record and code == "OK":
                    ok_ms.append(ms)
                elif record and code == "RESOURCE_EXHAUSTED":
                    refused_ms.append(ms)
                elif record:
                    other[code] = other.get(code, 0) + 1
            if code == "RESOURCE_EXHAUSTED":
                time.sleep(BACKOFF_S)

    _run_threads(client, job, channels)
    return {"ok_ms": ok_ms, "refused_ms": refused_ms, "other": other}


def _split(total: int, procs: int) -> list[int]:
    procs = max(1, min(procs, total))
    return [total // procs + (1 if i < total % procs else 0) for i in range(procs)]


def run_clients(pool: ProcessPoolExecutor, fn, target: str, clients: int, procs: int, seconds: float,
                record_after: float, **extra) -> list[dict]:
    start = time.time() + 1.0  # let every process start and connect first
    jobs = [{"target": target, "threads": n, "seed": i + 1, "stop_at": start + seconds,
             "record_from": start + record_after, **extra} for i, n in enumerate(_split(clients, procs))]
    return list(pool.map(fn, jobs))


# -- measurements ---------------------------------------------------------------------------------------

def _pct(ms: list[float]) -> dict:
    if not ms:
        return {"count": 0}
    a = np.asarray(ms)
    return {"count": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


class RssSampler(threading.Thread):
    def __init__(self, pid: int, period: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.period, self.samples = pid, period, []
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.wait(self.period):
            self.samples.append((time.time(), tree_usage(self.pid)["rss"]))

    def stop(self) -> list[tuple[float, int]]:
        self._stop_event.set()
        self.join(5)
        return self.samples


class HealthProbe(threading.Thread):
    """Health/Check every `period` s over its own connection: statuses and latencies."""

    def __init__(self, target: str, period: float = 0.1):
        super().__init__(daemon=True)
        self.target, self.period = target, period
        self.results: list[tuple[str, float]] = []
        self._stop_event = threading.Event()

    def run(self):
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not self._stop_event.wait(self.period):
                t0 = time.perf_counter()
                try:
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(
                        stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
                except grpc.RpcError as e:
                    status = e.code().name
                self.results.append((status, 1000 * (time.perf_counter() - t0)))

    def stop(self) -> list[tuple[str, float]]:
        self._stop_event.set()
        self.join(5)
        return self.results


def prime(target: str, roles: dict) -> dict:
    """One call of each kind (paying one-time costs before the warm-up) and the images Invert/Interpolate use:
    generated by each invertible model itself, so they are in its range."""
    import grpc

    from protos import tensors
    from protos.ganserve.v1 import generator_pb2 as pb
    from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc

    images = {}
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.GeneratorServiceStub(channel)
        for m in roles["invertible"]:
            if m["conditional"]:
                r = stub.SampleConditional(pb.SampleConditionalRequest(model=m["name"], n=4, seed=1, labels=[3]))
            else:
                r = stub.Sample(pb.SampleRequest(model=m["name"], n=4, seed=1))
            images[m["name"]] = np.array(tensors.to_array(r.samples)).tolist()
        mix = Mix(roles, {k: np.asarray(v, np.float32) for k, v in images.items()}, seed=0)
        primed = {}
        for kind in mix.kinds:
            label, method, request, expected = mix.next(kind)
            t0 = time.perf_counter()
            code, _ = _call(stub, method, request, 300)
            primed[label] = {"code": code, "expected": expected, "ms": 1000 * (time.perf_counter() - t0)}
            if kind == "EvaluateDivergence" and code == "FAILED_PRECONDITION":  # no MNIST here: model vs model
                roles["evaluate_p"] = ""
                code, _ = _call(stub, method, mix.next(kind)[2], 300)
                primed[label]["code_model_vs_model"] = code
    return {"images": images, "primed": primed}


# -- report -----------------------------------------------------------------------------------------------

def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def render(res: dict) -> str:
    s, o = res["soak"], res["overload"]
    rows = [[label, f"{v['count']:,}", f"{v['p50_ms']:.1f}", f"{v['p99_ms']:.1f}", f"{v['max_ms']:.0f}",
             ", ".join(f"{k} {n}" for k, n in sorted(v["codes"].items()))]
            for label, v in sorted(s["by_label"].items())]
    t = s["total"]
    rows.append(["**all**", f"{t['count']:,}", f"{t['p50_ms']:.1f}", f"{t['p99_ms']:.1f}", f"{t['max_ms']:.0f}",
                 f"unexpected {s['unexpected_count']}"])
    out = [f"Soak: {s['clients']} clients, {s['duration_s']:.0f} s ({s['calls_per_s']:.0f} calls/s)",
           "", _table(["call", "calls", "p50 ms", "p99 ms", "max ms", "statuses"], rows), "",
           f"Server RSS: after warm-up {s['rss_warm_mb']:.0f} MB, after the soak {s['rss_after_mb']:.0f} MB "
           f"({100 * s['rss_growth']:+.1f}%), peak {s['rss_peak_mb']:.0f} MB (target: within 10%: "
           f"{'met' if abs(s['rss_growth']) <= 0.10 else 'NOT met'})", ""]
    b, ov = o["baseline"], o["overload"]
    out += [f"SIGTERM after the soak: exit status {s['sigterm_exit']} after {s['sigterm_s']:.1f} s.", "",
            f"Overload: a server admitting {o['limit']} calls at once (--max-concurrent-rpcs {o['limit']}); "
            f"Sample n=8; a refused client waits {1000 * o['backoff_s']:.0f} ms", "",
            _table(["phase", "clients", "admitted/s", "admitted p50 / p99 ms", "refused", "refusal p50 / p99 ms",
                    "other statuses", "health SERVING", "health p99 ms"],
                   [[name, str(ph["clients"]), f"{ph['admitted_per_s']:.0f}",
                     f"{ph['ok'].get('p50_ms', 0):.0f} / {ph['ok'].get('p99_ms', 0):.0f}",
                     f"{ph['refused'].get('count', 0):,}",
                     (f"{ph['refused']['p50_ms']:.1f} / {ph['refused']['p99_ms']:.1f}" if ph["refused"].get("count")
                      else "-"), ", ".join(f"{k} {n}" for k, n in ph["other"].items()) or "none",
                     f"{ph['health']['serving']}/{ph['health']['probes']}", f"{ph['health'].get('p99_ms', 0):.1f}"]
                    for name, ph in (("admitted only", b), (f"{o['factor']}x overload", ov))]), "",
            f"Admitted throughput under overload: {100 * o['throughput_ratio']:.0f}% of the admitted-only figure. "
            f"SIGTERM after the overload: exit status {o['sigterm_exit']} after {o['sigterm_s']:.1f} s."]
    return "\n".join(out)


def sigterm(server: Ganserve) -> tuple[int, float]:
    """SIGTERM the server: (exit status, seconds to exit)."""
    t0 = time.perf_counter()
    server.proc.send_signal(signal.SIGTERM)
    return server.proc.wait(timeout=60), time.perf_counter() - t0


def soak_phase(a, pool, server: Ganserve, t_start: float) -> tuple[dict, dict, dict]:
    """Prime, warm up, then the mix for a.duration s: (results, roles, prime calls)."""
    target = server.address
    roles = discover(target)
    if not roles["unconditional"]:
        raise SystemExit("soak: the store has no unconditional image model to sample")
    print(f"soak: server {target} pid {server.proc.pid}; models {', '.join(roles['all'])}", file=sys.stderr)
    primed = prime(target, roles)
    images = primed["images"]

    print(f"soak: warm-up {a.warmup:.0f} s with {a.clients} clients", file=sys.stderr)
    warm = run_clients(pool, mix_worker, target, a.clients, a.procs, a.warmup, a.warmup, roles=roles, images=images)
    time.sleep(1.0)
    rss_warm = tree_usage(server.proc.pid)["rss"]

    print(f"soak: {a.duration:.0f} s with {a.clients} clients", file=sys.stderr)
    sampler = RssSampler(server.proc.pid)
    sampler.start()
    cpu0 = tree_usage(server.proc.pid)["cpu_s"]
    parts = run_clients(pool, mix_worker, target, a.clients, a.procs, a.duration, 0.0, roles=roles, images=images)
    cpu1 = tree_usage(server.proc.pid)["cpu_s"]
    rss_series = sampler.stop()
    time.sleep(1.0)
    rss_after = tree_usage(server.proc.pid)["rss"]
    by_label: dict[str, dict] = {}
    unexpected = [u for part in parts for u in part["unexpected"]]
    for part in parts:
        for label, rec in part["by_label"].items():
            into = by_label.setdefault(label, {"ms": [], "codes": {}})
            into["ms"] += rec["ms"]
            for code, n in rec["codes"].items():
                into["codes"][code] = into["codes"].get(code, 0) + n
    all_ms = [m for rec in by_label.values() for m in rec["ms"]]
    unexpected_count = sum(n for label, rec in by_label.items() for code, n in rec["codes"].items()
                           if code != (EXPECTED_BAD[label[5:]] if label.startswith("bad: ") else "OK"))
    result = {
        "clients": a.clients, "duration_s": a.duration, "calls": len(all_ms), "calls_per_s": len(all_ms) / a.duration,
        "by_label": {k: {**_pct(v["ms"]), "codes": v["codes"]} for k, v in by_label.items()},
        "total": _pct(all_ms), "unexpected_count": unexpected_count, "unexpected_examples": unexpected[:20],
        "warmup_calls": sum(len(r["ms"]) for part in warm for r in part["by_label"].values()),
        "rss_warm_mb": rss_warm / 2**20, "rss_after_mb": rss_after / 2**20,
        "rss_peak_mb": max([r for _, r in rss_series] + [rss_after]) / 2**20,
        "rss_growth": (rss_after - rss_warm) / rss_warm,
        "rss_series_mb": [[round(t - t_start, 1), round(r / 2**20, 1)] for t, r in rss_series],
        "server_cpu_cores": (cpu1 - cpu0) / a.duration,
    }
    return result, {k: v for k, v in roles.items()}, primed["primed"]


def overload_phase(a, pool, server: Ganserve, model: str) -> dict:
    """Admitted-only throughput, then a.overload_factor x as many clients, with health probes."""
    target = server.address
    over = {"limit": a.overload_limit, "factor": a.overload_factor, "backoff_s": BACKOFF_S}
    record_after = min(2.0, a.overload_seconds / 3)
    window = a.overload_seconds - record_after
    for name, clients in (("baseline", a.overload_limit), ("overload", a.overload_limit * a.overload_factor)):
        print(f"soak: {name}: {clients} clients for {a.overload_seconds:.0f} s", file=sys.stderr)
        probe = HealthProbe(target)
        probe.start()
        parts = run_clients(pool, sample_worker, target, clients, a.procs, a.overload_seconds, record_after,
                            model=model)
        health = probe.stop()
        ok = [m for part in parts for m in part["ok_ms"]]
        refused = [m for part in parts for m in part["refused_ms"]]
        other: dict[str, int] = {}
        for part in parts:
            for code, n in part["other"].items():
                other[code] = other.get(code, 0) + n
        over[name] = {"clients": clients, "admitted_per_s": len(ok) / window, "ok": _pct(ok), "refused": _pct(refused),
                      "other": other,
                      "health": {"probes": len(health), "serving": sum(st == "SERVING" for st, _ in health),
                                 "statuses": sorted({st for st, _ in health}), **_pct([ms for _, ms in health])}}
    over["throughput_ratio"] = over["overload"]["admitted_per_s"] / max(over["baseline"]["admitted_per_s"], 1e-9)
    return over


# -- main -------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", default=str(ROOT / "model_store"))
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--procs", type=int, default=4, help="client processes the clients are spread over")
    p.add_argument("--duration", type=float, default=60.0, help="soak seconds")
    p.add_argument("--warmup", type=float, default=15.0, help="warm-up seconds before the RSS baseline")
    p.add_argument("--overload-seconds", type=float, default=15.0, help="length of each overload phase")
    p.add_argument("--overload-factor", type=int, default=4, help="overload clients = factor x the admission limit")
    p.add_argument("--overload-limit", type=int, default=32,
                   help="max_concurrent_rpcs of the overload server (the soak server keeps the default)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="watchdog: stop everything after this")
    p.add_argument("--json", default=str(ROOT / "docs" / "soak.json"), help="'' to skip")
    p.add_argument("--quick", action="store_true", help="8 clients, 5 s phases (checks the script works)")
    a = p.parse_args(argv)
    if a.quick:
        a.clients, a.procs, a.duration, a.warmup, a.overload_seconds, a.overload_limit = 8, 2, 5, 3, 4, 8
    if not Path(a.store).is_dir():
        p.error(f"--store {a.store} is not a folder")

    watchdog_fired = threading.Event()

    def watchdog():
        watchdog_fired.set()
        print(f"soak: stopped by the watchdog after {a.max_seconds:.0f} s", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(a.max_seconds, watchdog)
    timer.daemon = True
    timer.start()
    t_start = time.time()
    log = ROOT / "runs" / "soak-server.log"
    log.parent.mkdir(exist_ok=True)
    res: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                 "settings": {k: v for k, v in vars(a).items() if k != "json"}}
    try:
        with ProcessPoolExecutor(max_workers=max(a.procs, 1), mp_context=mp.get_context("spawn")) as pool:
            with Ganserve(Path(a.store), args=("--metrics-port", "-1"), log=log) as server:
                res["soak"], res["roles"], res["prime"] = soak_phase(a, pool, server, t_start)
                res["soak"]["sigterm_exit"], res["soak"]["sigterm_s"] = sigterm(server)
            with Ganserve(Path(a.store), args=("--metrics-port", "-1", "--max-concurrent-rpcs", str(a.overload_limit)),
                          log=log) as server:
                res["overload"] = overload_phase(a, pool, server, res["roles"]["unconditional"][0])
                res["overload"]["sigterm_exit"], res["overload"]["sigterm_s"] = sigterm(server)
    finally:
        timer.cancel()
    res["wall_s"] = time.time() - t_start
    text = render(res)
    print(text)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
        print(f"\nwrote {a.json}", file=sys.stderr)
    s, o = res["soak"], res["overload"]
    ok = (s["unexpected_count"] == 0 and abs(s["rss_growth"]) <= 0.10 and s["sigterm_exit"] == 0
          and o["overload"]["health"]["serving"] == o["overload"]["health"]["probes"] and o["sigterm_exit"] == 0
          and not o["overload"]["other"])
    return 0 if ok and not watchdog_fired.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
