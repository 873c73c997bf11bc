"""The benchmark's measurement rounds: the load-generator process, interleaved rounds of contenders, pooling."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from bench.servers import ROOT


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


class Load:
    """The load generator process (bench/load.py), driven one JSON command at a time; a command with
    `"client": "native"` goes to the native load generators instead (h2load / wrk, bench/native.py)."""

    def __init__(self, native: bool = False):
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.load"], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.native = None
        if native:
            from bench.native import NativeLoad

            self.native = NativeLoad()

    def __call__(self, cmd: dict) -> dict:
        if cmd.get("client") == "native":
            return self.native(cmd) if self.native else {"error": "h2load / wrk not installed"}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited ({self.proc.poll()})")
        return json.loads(line)

    def close(self):
        if self.native is not None:
            self.native.close()
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def interleaved(load: Load, contenders: list[tuple[str, dict, object]], rounds: int, *, usage=None) -> dict:
    """Run each contender's load command once per round, rounds in rotated order; pool the results.

    contenders: (label, load command, server to sample usage of or None)."""
    per = {label: [] for label, _, _ in contenders}
    for r in range(rounds):
        k = r % len(contenders)
        for label, cmd, server in contenders[k:] + contenders[:k]:
            before = server.usage() if server is not None else None
            t0 = time.monotonic()
            res = load(cmd)
            span = time.monotonic() - t0
            if server is not None and "error" not in res:
                after = server.usage()
                # the server's CPU over the whole call (warm-up at the same load included) divided by the call's
                # length: dividing by the measured window alone would overstate it by the warm-up's share
                res["server_cpu_cores"] = (after["cpu_s"] - before["cpu_s"]) / max(span, 1e-9)
            per[label].append(res)
    return {label: pool(results) for label, results in per.items()}


def pool(results: list[dict]) -> dict:
    ok = [r for r in results if r.get("requests")]
    errors = sum(r.get("errors", 0) for r in results)
    first_error = next((r.get("first_error") or r.get("error") for r in results
                        if r.get("first_error") or r.get("error")), "")
    if not ok:
        return {"error": first_error or "no requests completed", "errors": errors}
    lat = np.concatenate([r["latencies_ms"] for r in ok])
    med = lambda key: float(np.median([r[key] for r in ok if key in r]))  # noqa: E731
    out = {"samples_per_s": med("samples_per_s"), "req_per_s": med("req_per_s"),
           "rounds_samples_per_s": [round(r["samples_per_s"], 1) for r in ok],
           "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
           "mean_ms": float(lat.mean()), "requests": int(sum(r["requests"] for r in ok)), "errors": errors,
           "first_error": first_error, "bytes_per_response": ok[0]["bytes_per_response"],
           "load_cpu_cores": med("load_cpu_cores"), "load_cpu_us_per_req": med("load_cpu_us_per_req")}
    if any("server_cpu_cores" in r for r in ok):
        out["server_cpu_cores"] = med("server_cpu_cores")
        # CPU the server spent per request: robust to other processes taking the cores (unlike wall time)
        out["server_cpu_ms_per_req"] = float(np.median([1e3 * r["server_cpu_cores"] / r["req_per_s"] for r in ok
                                                        if "server_cpu_cores" in r]))
    return out
