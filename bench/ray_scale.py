"""python -m bench.ray_scale [--n 60000] [--model cgan-mnist] [--json out.json] [--markdown out.md]

Beyond one machine, measured on this one (docs/scaling_out.md):
  1  the in-process ceiling: ONNX Runtime on the generator at the job's chunk size (1 core; 2 cores as the
     server's batcher uses them: the batch split in two on one-thread sessions);
  2  the batch job (python -m sdk.batch) three ways on the same arguments: streamed from `python -m server`
     (the single-machine job), on a local Ray cluster of one node (2 CPUs), and on two Ray nodes (1 CPU each,
     the same 2 cores); samples/s after the workers are up and with their start-up, each as a ratio to the
     single-machine job and to the ceiling; the three outputs checked byte for byte;
  3  online: Ray Serve (1 replica, Serve's gRPC proxy) against `python -m server` at n=1 and n=256, calls
     back to back from one client, in interleaved rounds.
Short runs on a shared machine: other processes' load shows up in every figure (the load average is printed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import psutil
import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.serve.config import gRPCOptions, HTTPOptions

import ganserve
import protos
import server

from bench.inprocess import Contender, SplitRun, feeds_for, interleave, ort_session
from bench.servers import Ganserve, free_port
from ganserve.scale import cluster
from ganserve.store import sessions
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from server import ray_serve

ROOT = Path(__file__).resolve().parent.parent
MADE = re.compile(r"made (\d+) in ([\d.]+) s")
READY = re.compile(r"ready in ([\d.]+) s")


class CpuMeter:
    """CPU seconds (user + system) used by the processes under `roots` (and the roots) while it runs: a thread
    polls them every 0.2 s and keeps each process's last reading; processes alive at the start count from their
    reading then. On a shared machine CPU per sample is the figure that other processes' load disturbs least."""

    def __init__(self, *roots: int, exclude: tuple[int, ...] = ()):
        self.roots, self.exclude = list(roots), {os.getpid(), *exclude}
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()

    def add(self, pid: int) -> None:
        self.roots.append(pid)

    def _poll(self) -> None:
        for root in list(self.roots):
            try:
                procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for proc in procs:
                if proc.pid in self.exclude:
                    continue
                try:
                    t = proc.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                self.last[proc.pid] = t.user + t.system
                self.first.setdefault(proc.pid, 0.0 if self._started else self.last[proc.pid])

    def __enter__(self) -> "CpuMeter":
        self._started = False
        self._poll()
        self._started = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._poll()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    @property
    def seconds(self) -> float:
        return sum(self.last[p] - self.first[p] for p in self.last)


def ceiling(store: Path, model: str, chunk: int, round_s: float) -> dict:
    folder, manifest = sessions.newest_valid(store, model)
    path = str(folder / manifest["graphs"]["generator"]["file"])
    out = manifest["graphs"]["generator"]["outputs"][0]["name"]
    feeds = feeds_for(manifest, chunk)
    one, split = ort_session(path, 1), SplitRun(ort_session(path, 1), 2)
    res = interleave([Contender("ort/1 core", lambda: one.run([out], feeds)),
                      Contender("ort/2 cores (split batch)", lambda: split.run([out], feeds))],
                     chunk, rounds=3, round_s=round_s)
    calls, t0 = 10, time.process_time()  # this process's CPU for the generator alone: the floor of any path
    for _ in range(calls):
        one.run([out], feeds)
    res["cpu_ms_per_1000"] = 1e6 * (time.process_time() - t0) / (calls * chunk)
    return res


def batch_job(out: Path, args, *extra: str, target: str | None = None, meter_roots: tuple[int, ...] = ()) -> dict:
    """One run of python -m sdk.batch; its rate, and the CPU of the driver, the workers and `meter_roots` (the
    server, a cluster's processes)."""
    env = dict(os.environ, **({"GANSERVE_TARGET": target} if target else {}))
    cmd = [sys.executable, "-m", "sdk.batch", "--model", args.model, "--n", str(args.n), "--seed", "1",
           "--labels", *map(str, range(10)), "--shard-size", str(args.shard_size), "--encoding", "uint8",
           "--out", str(out), "--quiet", *extra]
    t0 = time.monotonic()
    lines, marks = [], {}
    with CpuMeter(*meter_roots) as meter, tempfile.TemporaryFile("w+") as so:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=so, stderr=subprocess.PIPE, text=True)
        meter.add(proc.pid)
        for line in proc.stderr:  # the CPU used until the workers are up is their start-up, reported apart
            lines.append(line)
            if READY.search(line):
                marks["ready_cpu_s"] = meter.seconds
        code = proc.wait(timeout=1800)
        so.seek(0)
        stdout, stderr = so.read(), "".join(lines)
    wall = time.monotonic() - t0
    if code:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    made, secs = MADE.search(stdout).groups()
    ready = READY.search(stderr)
    start = float(ready.group(1)) if ready else 0.0
    secs = float(secs)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(out.iterdir()))).hexdigest()
    return {"samples": int(made), "job_s": round(secs, 2), "workers_start_s": start, "process_wall_s": round(wall, 1),
            "samples_per_s": int(made) / max(secs - start, 1e-9), "samples_per_s_with_start": int(made) / secs,
            "cpu_s": round(meter.seconds, 1), "start_cpu_s": round(marks.get("ready_cpu_s", 0.0), 1),
            "cpu_ms_per_1000": 1e6 * (meter.seconds - marks.get("ready_cpu_s", 0.0)) / int(made),
            "sha256_all_files": digest}


def two_node_cluster() -> Cluster:
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                        "include_dashboard": False})
    c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    c.wait_for_nodes(timeout=120)
    return c


def serve_app(store: Path):
    """Ray Serve with one replica on a local 2-CPU cluster: the gRPC proxy's address, and how to stop it."""
    cluster.connect("local", runtime_env={"py_modules": [ganserve, protos, server]}, num_cpus=2)
    port = free_port()
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=free_port()),
                grpc_options=gRPCOptions(port=port, grpc_servicer_functions=ray_serve.SERVICER_FUNCTIONS))
    serve.run(ray_serve.Ganserve.options(num_replicas=1, ray_actor_options={"num_cpus": 1})
              .bind(store=str(store.resolve()), reload_interval_s=0), name="ganserve")
    return f"127.0.0.1:{port}", lambda: (serve.shutdown(), ray.shutdown())


def online(targets: dict[str, tuple[str, tuple[int, ...]]], model: str, round_s: float) -> dict:
    """Per n: each server's latency and rate in interleaved rounds, then its own CPU per call (the processes
    under its roots) over a fixed number of calls."""
    out = {}
    channels = {name: grpc.insecure_channel(t) for name, (t, _) in targets.items()}
    try:
        for n, calls in ((1, 400), (256, 20)):
            request = pb.SampleConditionalRequest(model=model, n=n, seed=1, labels=[3])
            contenders = []
            for name, ch in channels.items():
                call = pb_grpc.GeneratorServiceStub(ch).SampleConditional
                contenders.append(Contender(name, lambda call=call: call(request, timeout=60)))
            row = out[f"n={n}"] = interleave(contenders, n, rounds=4, round_s=round_s, warmup_calls=5)
            for c in contenders:
                with CpuMeter(*targets[c.name][1]) as meter:
                    for _ in range(calls):
                        c.call()
                row[c.name]["server_cpu_ms_per_call"] = 1e3 * meter.seconds / calls
    finally:
        for ch in channels.values():
            ch.close()
    return out


def report(res: dict) -> str:
    lines = [f"# Ray: batch job and online serving on this machine ({res['model']}, {res['n']:,} samples, uint8)", "",
             f"Shared machine: {res['cpus']} CPUs, load average {res['load_before']} before, {res['load_after']} after. "
             "Short runs: under load, wall-clock figures follow each path's share of the machine; CPU per sample "
             "(all of a path's processes) is disturbed least.", "",
             "| in-process ceiling (chunk of 1024) | samples/s |", "| --- | --- |"]
    lines += [f"| {k} | {v['samples_per_s']:,.0f} |" for k, v in res["ceiling"].items() if isinstance(v, dict)]
    floor = res["ceiling"]["cpu_ms_per_1000"]
    lines += ["", f"CPU of the generator alone (ONNX Runtime, one thread, chunks of 1024): {floor:,.0f} ms per 1,000 "
              "samples."]
    best = max(v["samples_per_s"] for v in res["ceiling"].values() if isinstance(v, dict))
    base = res["batch"]["single machine (gRPC stream)"]["samples_per_s"]
    lines += ["", "Batch job: samples/s and CPU after the workers are up; the start-up (workers' processes, imports, "
              "sessions) is reported apart in seconds and CPU-seconds.", "",
              "| batch job | samples/s (workers up) | with start-up | workers' start (s) | vs single machine | "
              "vs ceiling | CPU ms / 1,000 samples, workers up (all its processes) | generator's share | "
              "start-up CPU s | bytes = single machine |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    ref = res["batch"]["single machine (gRPC stream)"]["sha256_all_files"]
    for k, v in res["batch"].items():
        lines.append(f"| {k} | {v['samples_per_s']:,.0f} | {v['samples_per_s_with_start']:,.0f} | "
                     f"{v['workers_start_s']:.1f} | {v['samples_per_s'] / base:.0%} | {v['samples_per_s'] / best:.0%} | "
                     f"{v['cpu_ms_per_1000']:,.0f} | {floor / v['cpu_ms_per_1000']:.0%} | "
                     f"{v['start_cpu_s']:.1f} | "
                     f"{'yes' if v['sha256_all_files'] == ref else 'NO'} |")
    lines += ["", "| online (one client, calls back to back) | p50 ms | p99 ms | samples/s | server CPU ms per call |",
              "| --- | --- | --- | --- | --- |"]
    for n, row in res["online"].items():
        for k, v in row.items():
            lines.append(f"| {n}: {k} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['samples_per_s']:,.0f} | "
                         f"{v['server_cpu_ms_per_call']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ray_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="model_store")
    p.add_argument("--model", default="cgan-mnist")
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--round-s", type=float, default=3.0)
    p.add_argument("--json", help="write the results here (default bench/results/ray-<time>.json)")
    p.add_argument("--markdown", help="also write the tables here")
    args = p.parse_args(argv)
    store = Path(args.store).resolve()
    res = {"model": args.model, "n": args.n, "cpus": os.cpu_count(), "when": dt.datetime.now(dt.UTC).isoformat(),
           "load_before": [round(x, 1) for x in os.getloadavg()]}
    print("in-process ceiling ...", file=sys.stderr)
    res["ceiling"] = ceiling(store, args.model, 1024, args.round_s)
    res["batch"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("single-machine batch job ...", file=sys.stderr)
        with Ganserve(store) as srv:
            res["batch"]["single machine (gRPC stream)"] = batch_job(tmp / "grpc", args, target=srv.address,
                                                                      meter_roots=(srv.proc.pid,))
        print("Ray batch job, 1 node ...", file=sys.stderr)
        res["batch"]["Ray, 1 node x 2 CPUs"] = batch_job(tmp / "ray1", args, "--engine", "ray", "--store", str(store),
                                                          "--workers", "2")
        print("Ray batch job, 2 nodes ...", file=sys.stderr)
        c = two_node_cluster()
        try:
            res["batch"]["Ray, 2 nodes x 1 CPU"] = batch_job(tmp / "ray2", args, "--engine", "ray", "--store",
                                                              str(store), "--address", c.address, "--workers", "2",
                                                              meter_roots=(os.getpid(),))  # the nodes' processes
        finally:
            c.shutdown()
    print("online: Ray Serve vs python -m server ...", file=sys.stderr)
    address, stop = serve_app(store)
    try:
        with Ganserve(store) as srv:  # Ray's processes are this one's children; the server's are not
            ray_roots = tuple(p.pid for p in psutil.Process().children() if p.pid != srv.proc.pid)
            res["online"] = online({"python -m server": (srv.address, (srv.proc.pid,)),
                                    "Ray Serve (1 replica)": (address, ray_roots)}, args.model, args.round_s)
    finally:
        stop()
    res["load_after"] = [round(x, 1) for x in os.getloadavg()]
    text = report(res)
    print(text)
    path = Path(args.json or ROOT / "bench" / "results" / f"ray-{dt.datetime.now():%Y%m%d-%H%M%S}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text)
    print(f"results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
