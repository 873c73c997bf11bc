"""In-process engines on one generator: ONNX Runtime and torch (eager, torch.compile) at given thread
counts, timed in interleaved rounds so machine noise hits every contender alike.

A round runs one contender's calls back to back for `round_s` seconds; every round visits every contender,
in a rotated order. A contender's samples/s is the median over its rounds; its latency percentiles pool the
per-call times of all its rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Contender:
    name: str
    call: Callable[[], object]            # one run on the prepared batch
    prepare: Callable[[], None] = lambda: None   # before each of its rounds (e.g. torch.set_num_threads)
    rates: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


def interleave(contenders: list[Contender], batch: int, *, rounds: int, round_s: float,
               warmup_calls: int = 2) -> dict[str, dict]:
    for c in contenders:
        c.prepare()
        for _ in range(warmup_calls):
            c.call()
    for r in range(rounds):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            c.prepare()
            calls, start = 0, time.perf_counter()
            end = start + round_s
            while True:
                t = time.perf_counter()
                c.call()
                t2 = time.perf_counter()
                c.times.append(t2 - t)
                calls += 1
                if t2 >= end and calls >= 2:
                    break
            c.rates.append(calls * batch / (t2 - start))
    out = {}
    for c in contenders:
        ms = np.array(c.times) * 1e3
        out[c.name] = {"samples_per_s": float(np.median(c.rates)), "rounds": [round(x, 1) for x in c.rates],
                       "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                       "calls": len(ms)}
    return out


def ort_session(path: str, threads: int):
    """The engine measured on its own (not ganserve.store.sessions): the bench sets every option itself."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class SplitRun:
    """One batch cut into `parts` contiguous parts run at the same time on one 1-intra-op-thread session, each
    part on its own thread (the caller runs the last): what the server's batcher does with a large batch
    (server/batcher.py, model_runners), measured in-process so the ceiling includes it."""

    def __init__(self, session, parts: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self.session, self.parts = session, parts
        self.pool = ThreadPoolExecutor(parts - 1)

    def run(self, names, feeds: dict) -> list:
        rows = len(next(iter(feeds.values())))
        if rows < self.parts:
            return self.session.run(names, feeds)
        step = -(-rows // self.parts)
        cuts = [{k: v[lo:lo + step] for k, v in feeds.items()} for lo in range(0, rows, step)]
        pending = [self.pool.submit(self.session.run, names, c) for c in cuts[:-1]]
        last = self.session.run(names, cuts[-1])
        outs = [f.result() for f in pending] + [last]
        return [np.concatenate([o[i] for o in outs]) for i in range(len(last))]


def feeds_for(manifest: dict, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Generator inputs for `batch` samples: latents of `seed` (+ one-hot labels cycling over the classes)."""
    from protos import latents as latent_fn

    graph = manifest["graphs"]["generator"]
    names = [s["name"] for s in graph["inputs"]]
    feeds = {names[0]: latent_fn.latents(seed, batch, manifest["latent_dim"])}
    if manifest["num_classes"]:
        k = manifest["num_classes"]
        feeds[names[1]] = np.eye(k, dtype=np.float32)[np.arange(batch) % k]
    return feeds


class TorchRunner:
    """The ONNX graph as a torch module (bench/onnx_torch.py), eager and optionally compiled."""

    def __init__(self, onnx_path: str, reference: Callable[[dict], np.ndarray], feeds: dict):
        import torch

        from bench.onnx_torch import OnnxModule

        self.torch = torch
        self.module = OnnxModule(onnx_path).eval()
        self.compiled = None
        self.compile_s: dict[int, float] = {}
        with torch.inference_mode():
            got = self.module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        self.max_abs_diff = float(np.abs(got - reference(feeds)).max())

    def compile(self):
        self.compiled = self.torch.compile(self.module, dynamic=False)

    def caller(self, feeds: dict, compiled: bool) -> Callable[[], object]:
        torch = self.torch
        args = [torch.from_numpy(v) for v in feeds.values()]
        fn = self.compiled if compiled else self.module
        if compiled:
            batch = len(args[0])
            t = time.perf_counter()
            with torch.inference_mode():
                fn(*args)
            self.compile_s[batch] = time.perf_counter() - t

        def call():
            with torch.inference_mode():
                return fn(*args)
        return call

    def threads(self, n: int) -> Callable[[], None]:
        return lambda: self.torch.set_num_threads(n)


def bench_model(onnx_path: str, manifest: dict, *, batches=(1, 8, 64, 256), threads=(1, 2), rounds: int,
                round_s: float, torch_eager: bool = True, torch_compile: bool = False, log=print) -> dict:
    """Samples/s and per-call latency of every engine x thread count at each batch size."""
    from bench import flops

    count = flops.count(onnx_path, batch=1)
    sessions = {t: ort_session(onnx_path, t) for t in threads}
    split = SplitRun(sessions[1] if 1 in sessions else ort_session(onnx_path, 1))
    out_name = manifest["graphs"]["generator"]["outputs"][0]["name"]
    result = {"flops_per_sample": count.per_sample, "params": count.params, "flops_by_op": count.by_op,
              "uncounted_elements": count.uncounted, "batches": {}, "torch": {}}
    runner = None
    if torch_eager or torch_compile:
        try:
            runner = TorchRunner(onnx_path, lambda f: sessions[threads[0]].run([out_name], f)[0],
                                 feeds_for(manifest, 4))
            result["torch"]["max_abs_diff_vs_ort"] = runner.max_abs_diff
            if runner.max_abs_diff > 1e-3:
                raise RuntimeError(f"torch output differs from ONNX Runtime by {runner.max_abs_diff:.2g}")
        except (ImportError, NotImplementedError, RuntimeError) as e:
            result["torch"]["error"] = f"{type(e).__name__}: {e}"
            log(f"  torch not measured: {result['torch']['error']}")
            runner = None
    if runner is not None and torch_compile:
        try:
            runner.compile()
        except Exception as e:  # noqa: BLE001 - reported, the benchmark goes on without it
            result["torch"]["compile_error"] = f"{type(e).__name__}: {e}"
            torch_compile = False
    for b in batches:
        feeds = feeds_for(manifest, b)
        contenders = [Contender(f"ort/t{t}", (lambda s=s, f=feeds: s.run([out_name], f))) for t, s in sessions.items()]
        if b >= 8:  # the batch in two halves on two 1-thread runs at once (the server's model_runners = 2)
            contenders.append(Contender("ort/2x1", lambda f=feeds: split.run([out_name], f)))
        if runner is not None:
            # torch and ONNX Runtime keep separate thread pools; set torch's before each of its rounds
            if torch_eager:
                contenders += [Contender(f"torch-eager/t{t}", runner.caller(feeds, False), runner.threads(t))
                               for t in threads]
            if torch_compile:
                try:
                    call = runner.caller(feeds, True)
                    contenders += [Contender(f"torch-compile/t{t}", call, runner.threads(t)) for t in threads]
                except Exception as e:  # noqa: BLE001 - reported, the benchmark goes on without it
                    result["torch"]["compile_error"] = f"{type(e).__name__}: {e}"
                    torch_compile = False
        stats = interleave(contenders, b, rounds=rounds, round_s=round_s)
        for s in stats.values():
            s["gflops"] = s["samples_per_s"] * count.per_sample / 1e9
        result["batches"][b] = stats
        best = max(stats, key=lambda k: stats[k]["samples_per_s"])
        log(f"  batch {b:>4}: " + "  ".join(f"{k} {v['samples_per_s']:,.0f}/s" for k, v in stats.items())
            + f"  (best {best})")
    if runner is not None:
        result["torch"]["compile_s"] = runner.compile_s
        runner.torch.set_num_threads(max(threads))
    return result
