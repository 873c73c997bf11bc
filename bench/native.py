"""Native load generators: h2load (nghttp2; gRPC over HTTP/2) and wrk (HTTP/1.1, for TorchServe), both C and
event-driven, in place of the Python client, for the same closed-loop rounds and result fields as bench/load.py.

Why: on this 2-core machine a Python gRPC client needs 0.3-0.8 cores for the request rates measured here, taken
from the server under test; h2load needs ~0.05. Real clients run elsewhere, so the server's capacity is what
it reaches when the client costs next to nothing. Both clients are measured in the same rounds and both are
reported; neither replaces the other (the Python client is what a notebook or a batch job pays). Results are
labelled " [native]" (bench/report.NATIVE) for both tools.

gRPC over h2load: one prebuilt request (length-prefixed protobuf, `content-type: application/grpc`,
`te: trailers`) sent by every client. The request carries no seed, so ganserve draws a fresh one per request
(every reply differs, as with the Python client's per-request seeds); a conditional model gets label 3.
h2load sees HTTP status 200 for every gRPC reply, errors included (the gRPC status is in the trailers), so
replies are checked by size instead: one reply is fetched first with grpcio, and a round whose received DATA
bytes fall short of `requests x that reply` counts the missing replies as errors (an error reply carries no
data; 1% of failed replies is enough to show). Latency percentiles come from h2load's per-request log.

HTTP over wrk: h2load's HTTP/1.1 parser rejects TorchServe's status line (`HTTP/1.1 200 ` with an empty
reason phrase: every reply counted failed), wrk's accepts it. A Lua script posts the JSON body and prints the
request count, non-2xx/socket errors and 100 latency percentiles (0.5 ... 99.5), which stand in for the
per-request latencies when rounds are pooled. wrk has no warm-up phase: a separate run of `warmup` seconds
goes first. wrk takes whole seconds (`-d`), so a round lasts round(duration) s, at least 1.

CPU of either tool comes from getrusage of the finished child.

    apt-get install nghttp2-client wrk      # Debian/Ubuntu: /usr/bin/h2load, /usr/bin/wrk
"""

from __future__ import annotations

import json
import resource
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ENCODINGS = {"float32": 1, "uint8": 2, "png": 3}
# a reply may be a few bytes shorter than the probe (the seed's varint length varies with its value)
SIZE_SLACK = 16


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration, e.status,
                         e.connect + e.read + e.write + e.timeout, summary.bytes))
  for i = 0, 99 do io.write(string.format("P %%d\\n", latency:percentile(i + 0.5))) end
end
"""


def available() -> str | None:
    """h2load's path when both tools are installed (the server sections need both), else None."""
    return shutil.which("h2load") if shutil.which("wrk") else None


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class NativeLoad:
    """Runs `{"op": "run", "target": grpc|http, ...}` commands with h2load; same reply fields as bench/load.py."""

    def __init__(self, h2load: str | None = None):
        self.h2load, self.wrk = h2load or available(), shutil.which("wrk")
        if self.h2load is None or self.wrk is None:
            raise FileNotFoundError("h2load or wrk not found (apt-get install nghttp2-client wrk)")
        self.tmp = Path(tempfile.mkdtemp(prefix="ganserve-h2load-"))
        self._probed: dict[str, int] = {}

    # -- requests -----------------------------------------------------------------------------------------
    def _grpc_request(self, spec: dict, n: int, encoding: str) -> tuple[str, bytes]:
        from protos.ganserve.v1 import generator_pb2 as pb

        k = spec.get("num_classes", 0)
        common = dict(model=spec["model"], n=n, encoding=ENCODINGS[encoding])
        if k:
            method, msg = "SampleConditional", pb.SampleConditionalRequest(labels=[3 % k], **common)
        else:
            method, msg = "Sample", pb.SampleRequest(**common)
        return f"/ganserve.v1.GeneratorService/{method}", msg.SerializeToString()

    def _probe(self, address: str, path: str, body: bytes) -> int:
        """Bytes of one real reply to `body` (raw protobuf over grpcio); raises on a gRPC error."""
        key = f"{address}{path}{body.hex()}"
        if key not in self._probed:
            import grpc

            with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 256 << 20)]) as ch:
                call = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
                self._probed[key] = len(call(body, timeout=60))
        return self._probed[key]

    # -- one round ----------------------------------------------------------------------------------------
    def __call__(self, cmd: dict) -> dict:
        if cmd.get("op") != "run":
            return {"error": f"native load runs 'run' commands only, got {cmd.get('op')!r}"}
        spec, n, c = cmd["target"], cmd["n"], cmd["concurrency"]
        enc, dur, warm = cmd.get("encoding", "float32"), cmd["duration"], cmd.get("warmup", 0.3)
        if spec["kind"] == "grpc":
            path, msg = self._grpc_request(spec, n, enc)
            try:
                reply = self._probe(spec["address"], path, msg)
            except Exception as e:  # noqa: BLE001 - the round reports it
                return {"requests": 0, "errors": 1, "first_error": f"probe call failed: {type(e).__name__}: {e}"}
            body = b"\x00" + struct.pack(">I", len(msg)) + msg
            url = f"http://{spec['address']}{path}"
            headers = ["content-type: application/grpc", "te: trailers"]
            expect = 5 + reply  # gRPC frame: 5-byte prefix + message
        elif spec["kind"] == "http":
            k = spec.get("num_classes", 0)
            payload = {"n": n, "seed": 1, "encoding": enc, **({"labels": [3 % k]} if k else {})}
            return self._wrk(spec["url"], json.dumps(payload), n=n, c=c, dur=dur, warm=warm)
        else:
            return {"error": f"native load has no target kind {spec['kind']!r}"}
        data_file = self.tmp / "body.bin"
        data_file.write_bytes(body)
        log_file = self.tmp / "requests.tsv"
        log_file.unlink(missing_ok=True)
        argv = [self.h2load, "-c", str(c), "-m", "1", "-t", "1", "-D", f"{int(dur * 1000)}ms",
                f"--warm-up-time={max(1, int(warm * 1000))}ms", "-d", str(data_file), f"--log-file={log_file}"]
        for h in headers:
            argv += ["-H", h]
        argv.append(url)
        cpu0, launched = _children_cpu(), time.time()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=dur + warm + 120)
        cpu = _children_cpu() - cpu0
        if proc.returncode != 0:
            return {"requests": 0, "errors": 1, "first_error": f"h2load exited {proc.returncode}: "
                                                              f"{(proc.stderr or proc.stdout)[-300:]}"}
        return self._result(proc.stdout, log_file, n=n, expect=expect, cpu=cpu,
                            measured_from=launched + warm)

    @staticmethod
    def _result(stdout: str, log_file: Path, *, n: int, expect: int, cpu: float, measured_from: float) -> dict:
        rows = np.loadtxt(log_file, dtype=np.int64, ndmin=2, usecols=(0, 1, 2)) if log_file.exists() and \
            log_file.stat().st_size else np.zeros((0, 3), np.int64)
        rows = rows[rows[:, 0] >= int(measured_from * 1e6) - 50_000]  # h2load logs the measured phase; be safe
        # "traffic: 8.42MB (8830784) total, 10.33KB (10581) headers (...), ..." covers the measured phase
        traffic = next((line for line in stdout.splitlines() if line.startswith("traffic:")), "")
        counts = [int(part.split(")")[0]) for part in traffic.split("(")[1:] if part.split(")")[0].isdigit()]
        if not len(rows):
            return {"requests": 0, "errors": 1, "first_error": "h2load completed no request"}
        ok = (rows[:, 1] >= 200) & (rows[:, 1] < 300)
        errors = int((~ok).sum())
        first_error = f"HTTP {int(rows[~ok][0, 1])}" if errors else ""
        done = int(ok.sum())
        if not done:
            return {"requests": 0, "errors": errors, "first_error": first_error}
        if expect and len(counts) < 2:  # replies that cannot be checked are not counted as served
            return {"requests": 0, "errors": done, "first_error": f"h2load printed no traffic counts: {traffic!r}"}
        if expect:  # gRPC: every reply must carry a real reply's data (errors carry none)
            body = counts[0] - counts[1]  # DATA frames: the replies plus 9 bytes of frame header each
            short = max(0, done - body // (expect - SIZE_SLACK))
            if short:
                errors += short
                first_error = first_error or (f"{short} of {done} replies shorter than a real reply "
                                              f"({expect} bytes): gRPC errors")
        good = done - (errors - int((~ok).sum()))  # gRPC replies that carried data
        lat = rows[ok, 2] / 1e3  # (for gRPC errors found by size, their latencies stay in: h2load cannot tell)
        # in integer microseconds first: seconds since the epoch as float64 keep only ~0.2 us
        wall = float((rows[ok, 0] + rows[ok, 2]).max() - rows[ok, 0].min()) / 1e6
        return {
            "requests": good, "samples": good * n, "errors": errors, "first_error": first_error,
            "wall_s": wall, "req_per_s": good / wall, "samples_per_s": good * n / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()), "max_ms": float(lat.max()),
            "latencies_ms": [round(float(x), 4) for x in lat],
            "bytes_per_response": expect or None, "load_cpu_s": cpu, "load_cpu_cores": cpu / wall,
            "load_cpu_us_per_req": 1e6 * cpu / max(done, 1), "client": "h2load",
        }

    def _wrk(self, url: str, body: str, *, n: int, c: int, dur: float, warm: float) -> dict:
        script = self.tmp / "post.lua"
        script.write_text(WRK_SCRIPT % body)
        base = [self.wrk, "-t", "1", "-c", str(c), "--timeout", "60s", "-s", str(script)]
        if warm > 0:
            subprocess.run([*base, "-d", "1s", url], capture_output=True, timeout=120)
        cpu0 = _children_cpu()
        proc = subprocess.run([*base, "-d", f"{max(1, round(dur))}s", url], capture_output=True, text=True,
                              timeout=dur + 120)
        cpu = _children_cpu() - cpu0
        if proc.returncode != 0:
            return {"requests": 0, "errors": 1, "first_error": f"wrk exited {proc.returncode}: "
                                                              f"{(proc.stderr or proc.stdout)[-300:]}"}
        return self._wrk_result(proc.stdout, n=n, cpu=cpu)

    @staticmethod
    def _wrk_result(stdout: str, *, n: int, cpu: float) -> dict:
        lines = stdout.splitlines()
        result = next((line.split()[1:] for line in lines if line.startswith("RESULT ")), None)
        if result is None:
            return {"requests": 0, "errors": 1, "first_error": f"wrk printed no result: {stdout[-300:]}"}
        requests, duration_us, status_errors, socket_errors, nbytes = map(int, result)
        lat = np.array([int(line.split()[1]) for line in lines if line.startswith("P ")], dtype=np.float64) / 1e3
        good, wall = requests - status_errors, duration_us / 1e6
        first_error = "; ".join(([f"{status_errors} replies not 2xx/3xx"] if status_errors else [])
                                + ([f"{socket_errors} socket errors/timeouts"] if socket_errors else []))
        if good <= 0:
            return {"requests": 0, "errors": status_errors + socket_errors, "first_error": first_error or "none"}
        return {
            "requests": good, "samples": good * n, "errors": status_errors + socket_errors,
            "first_error": first_error, "wall_s": wall, "req_per_s": good / wall, "samples_per_s": good * n / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()), "max_ms": float(lat.max()),
            "latencies_ms": [round(float(x), 4) for x in lat], "bytes_per_response": nbytes // max(requests, 1),
            "load_cpu_s": cpu, "load_cpu_cores": cpu / wall, "load_cpu_us_per_req": 1e6 * cpu / good,
            "client": "wrk",
        }

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
