"""The GPU check's dry run on CPU: every step runs (in-process with and without I/O binding, the server at n = 1,
256 and 32 clients, the batch job) and the JSON says it is a dry run on the CPU provider, not GPU figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_every_step(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--json", str(out),
                        "--time-limit", "300"], cwd=ROOT, capture_output=True, text=True, timeout=360, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["dry_run"] is True and res["provider"] == "CPUExecutionProvider" and "error" not in res
    assert res["install"]["providers"] and "installed" not in res["install"]  # a dry run installs nothing
    for n in ("1", "256"):
        for how in ("plain", "iobinding"):
            assert res["inprocess"][n][how]["samples_per_s"] > 0 and res["inprocess"][n][how]["calls"] >= 3
    for label in ("n1", "n256", "n1_c32"):
        assert res["served"][label]["requests"] > 0 and res["served"][label]["errors"] == 0
    assert res["batch_job"]["rc"] == 0 and res["batch_job"]["n"] == 2000
    assert set(res["targets"]) == {"served_vs_inprocess_n256", "n1_p50_over_inprocess_ms"}
    assert all(isinstance(t["met"], bool) for t in res["targets"].values())


def test_gpu_check_time_limit_keeps_what_it_measured(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--json", str(out),
                        "--time-limit", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    res = json.loads(out.read_text())
    assert r.returncode == 1 and "time limit of 1 s" in res["error"] and "loadavg_end" in res
