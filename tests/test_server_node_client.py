"""A client in another language: examples/node_client/client.js (@grpc/grpc-js, from the .proto alone) calls every
RPC against a real server. Runs when `node` and the example's node_modules (`npm ci` there) are present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node_client"


@pytest.mark.skipif(shutil.which("node") is None or not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir(),
                    reason="needs node and `npm ci` in examples/node_client")
def test_node_client_calls_every_rpc(server):
    r = subprocess.run(["node", "client.js", server.target], cwd=EXAMPLE, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    for rpc in ("ListModels", "GetModel", "Sample", "SampleConditional", "SampleStream", "Interpolate", "Invert",
                "EvaluateDivergence"):
        assert rpc in lines and "FAILED" not in lines[rpc], r.stdout
    assert "first 4 equal Sample: true" in lines["SampleStream"]
    assert "tiny-cgan@1 label 3: 3 PNGs" in lines["SampleConditional"]
    assert lines["(bad"].endswith("INVALID_ARGUMENT: n: must be at least 1, got 0")
