"""Many generators on one server: start-up time, the model-memory budget, cold and warm first calls.

    python -m bench.many_models [--models 1000] [--clients-models 200] [--calls 2000] [--budget-mb 10]
                                [--json docs/many_models.json]

1. builds a store of --models small MLP generators (z 16 -> 32 -> 1x28x28 tanh, ~100 KB of ONNX each,
   different weights) and times the registry's first scan of it in-process;
2. starts `python -m server --warm-models none --model-memory-mb B` and times it from spawn to health SERVING;
3. one client samples (n=1) --calls times from --clients-models of them chosen at random; every call is timed
   and marked cold (the model was not resident before it: checked with GetModel) or warm; every 50 calls the
   resident graphs (ListModels index: resident x size) are summed and checked against the budget;
4. prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper, numpy_helper

from ganserve.store import manifest as mf
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from server.config import Config
from server.registry import Registry

LATENT, HIDDEN, SHAPE = 16, 32, (1, 28, 28)
ROOT = Path(__file__).resolve().parent.parent


def small_generator(path: Path, seed: int) -> Path:
    """z (N, 16) -> tanh(relu(z W1) W2) reshaped to (N, 1, 28, 28)."""
    rng = np.random.default_rng(seed)
    w = {"W1": rng.standard_normal((LATENT, HIDDEN)).astype(np.float32) / 4,
         "W2": rng.standard_normal((HIDDEN, int(np.prod(SHAPE)))).astype(np.float32) / 6,
         "shape": np.array([-1, *SHAPE], np.int64)}
    nodes = [helper.make_node("MatMul", ["z", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["o"]), helper.make_node("Tanh", ["o"], ["t"]),
             helper.make_node("Reshape", ["t", "shape"], ["x"])]
    graph = helper.make_graph(nodes, "generator", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", LATENT])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *SHAPE])],
                              [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def build_store(store: Path, n: int, scratch: Path) -> int:
    """n models m0000.. with one version each, written straight into place (a scratch store: no atomic publish
    needed); returns the size of one generator file in bytes."""
    spec = lambda name, dims: {"name": name, "dtype": "float32", "dims": list(dims)}  # noqa: E731
    for i in range(n):
        folder = store / f"m{i:04d}" / "1"
        folder.mkdir(parents=True)
        g = small_generator(folder / "generator.onnx", i)
        manifest = {"format": 1, "name": f"m{i:04d}", "version": 1, "kind": "gan", "created": "2026-12-06T00:00:00Z",
                    "data_kind": "image", "latent_dim": LATENT, "num_classes": 0, "class_names": [],
                    "output": {"shape": list(SHAPE), "value_range": [-1.0, 1.0]}, "max_batch_size": 256,
                    "graphs": {"generator": {"file": "generator.onnx", "inputs": [spec("z", [LATENT])],
                                             "outputs": [spec("x", SHAPE)]}},
                    "files": {"generator.onnx": mf.sha256_file(g)}, "training": {}, "metrics": {}}
        (folder / "manifest.json").write_text(json.dumps(mf.validate(manifest)))
    return (store / "m0000" / "1" / "generator.onnx").stat().st_size


def scan_s(store: Path) -> float:
    """Seconds of the registry's first scan of `store` in this process (the server's start-up less imports)."""
    registry = Registry(Config(store=str(store), warm_models="none", reload_interval_s=0))
    t = time.perf_counter()
    registry.scan()
    return time.perf_counter() - t


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used: its start-up cost whatever else shares the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def run(models: int, client_models: int, calls: int, budget_mb: float, seed: int = 0) -> dict:
    with tempfile.TemporaryDirectory(prefix="ganserve-many-") as tmp:
        store, scratch = Path(tmp) / "store", Path(tmp)
        t0 = time.perf_counter()
        size = build_store(store, models, scratch)
        build_s = time.perf_counter() - t0
        first_scan_s = scan_s(store)
        port = _free_port()
        cmd = [sys.executable, "-m", "server", "--store", str(store), "--address", f"127.0.0.1:{port}",
               "--warm-models", "none", "--model-memory-mb", str(budget_mb), "--metrics-port", "-1",
               "--reload-interval-s", "0"]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    time.sleep(0.02)
                if time.perf_counter() - started > 120:
                    raise RuntimeError("the server did not report SERVING in 120 s")
            start_s = time.perf_counter() - started
            start_cpu_s = _cpu_s(proc.pid)
            rss_start = _rss_mb(proc.pid)
            stub = pb_grpc.GeneratorServiceStub(channel)
            rng = random.Random(seed)
            chosen = rng.sample(range(models), client_models)
            cold, warm, peak_resident = [], [], 0
            for i in range(calls):
                name = f"m{chosen[rng.randrange(client_models)]:04d}"
                resident = stub.GetModel(pb.GetModelRequest(model=name)).resident
                t = time.perf_counter()
                stub.Sample(pb.SampleRequest(model=name, n=1, seed=i))
                (warm if resident else cold).append(1000 * (time.perf_counter() - t))
                if i % 50 == 0 or i == calls - 1:
                    index = stub.ListModels(pb.ListModelsRequest(index=True)).models
                    peak_resident = max(peak_resident, sum(m.resident for m in index))
            rss_end = _rss_mb(proc.pid)
            channel.close()
        finally:
            proc.terminate()
            proc.wait(30)
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    return {"models": models, "model_onnx_bytes": size, "store_build_s": round(build_s, 1),
            "start_to_serving_s": round(start_s, 2), "first_scan_s": round(first_scan_s, 2),
            "start_cpu_s": round(start_cpu_s, 2), "budget_mb": budget_mb,
            "budget_models": int(budget_mb * 2**20 // size), "peak_resident_models": peak_resident,
            "peak_resident_mb": round(peak_resident * size / 2**20, 2), "client_models": client_models,
            "calls": calls, "cold_calls": len(cold), "cold_ms_p50": round(pct(cold, 50), 2),
            "cold_ms_p95": round(pct(cold, 95), 2), "warm_ms_p50": round(pct(warm, 50), 2),
            "warm_ms_p95": round(pct(warm, 95), 2), "rss_mb_at_start": round(rss_start), "rss_mb_at_end": round(rss_end),
            "cpu": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(r: dict) -> str:
    return "\n".join([
        "| measure | value |", "| --- | --- |",
        f"| store | {r['models']:,} generators of {r['model_onnx_bytes'] / 1024:.0f} KiB ONNX each (built in {r['store_build_s']} s) |",
        f"| start: the index of every version (manifests, sha256, policy, gate) | {r['first_scan_s']} s |",
        f"| start: `python -m server --warm-models none` spawned to health SERVING (imports included) | "
        f"{r['start_to_serving_s']} s wall, {r['start_cpu_s']} s of CPU, RSS {r['rss_mb_at_start']} MB |",
        f"| budget `--model-memory-mb {r['budget_mb']:g}` | {r['budget_models']} models; peak resident {r['peak_resident_models']} "
        f"({r['peak_resident_mb']} MB) |",
        f"| client | {r['calls']:,} Sample n=1 calls over {r['client_models']} models at random; RSS at end {r['rss_mb_at_end']} MB |",
        f"| cold first call (load + probe + run) | p50 {r['cold_ms_p50']} ms, p95 {r['cold_ms_p95']} ms ({r['cold_calls']} calls) |",
        f"| warm call | p50 {r['warm_ms_p50']} ms, p95 {r['warm_ms_p95']} ms |"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.many_models", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=int, default=1000, help="models in the generated store")
    p.add_argument("--clients-models", type=int, default=200,
                   help="how many of them the client calls, at random (at most --models)")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--budget-mb", type=float, default=10.0)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if not 1 <= a.clients_models <= a.models:  # before a store of --models is written and a server started
        p.error(f"--clients-models must be 1..--models ({a.models}), got {a.clients_models}")
    r = run(a.models, a.clients_models, a.calls, a.budget_mb)
    print(table(r))
    if a.json:
        a.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
