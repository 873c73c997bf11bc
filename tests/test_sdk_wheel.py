"""The thin SDK distribution: `pip wheel ./sdk` builds a wheel holding the packages `sdk` and `protos`; installed
into a fresh virtual environment with nothing but its three dependencies, it calls a real server over the shipped
model_store/ - on the oldest supported protobuf/grpcio and on the newest, one environment each.

Offline-safe where it can be: the dependencies' wheels are fetched once into build/wheelhouse/ (pip's cache or
the index), then every environment installs with --no-index from there. In CI (GANSERVE_CI=1) a failed fetch
fails the test; elsewhere it skips.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import start_server

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / "build" / "wheelhouse"
# (grpcio, protobuf, numpy): the floors in sdk/pyproject.toml, and what this project's environment runs.
ENDS = {
    "oldest": ("1.63.0", "5.26.1", "1.26.4"),
    "newest": (md.version("grpcio"), md.version("protobuf"), md.version("numpy")),
}
SERVER_STACK = ("onnxruntime", "onnx", "scipy", "torch", "ot", "PIL", "matplotlib", "prometheus_client", "grpc_status",
                "google.rpc", "server", "training", "ganserve")
pytestmark = pytest.mark.slow


def _pip(python: Path | str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of sdk/ and protos/ (setuptools leaves build/ and *.egg-info beside the sources)."""
    out, tree = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("tree")
    for package in ("sdk", "protos"):
        shutil.copytree(ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    done = _pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(tree / "sdk"))
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("ganserve_sdk-*.whl")
    return path


@pytest.fixture(scope="module")
def shipped_server():
    running = start_server(ROOT / "model_store", reload_interval_s=0, metrics_port=-1)
    yield running
    running.app.stop(0)


def test_the_wheel_names_what_it_installs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("ganserve_sdk-")} == {"sdk", "protos"}
    assert {"sdk/py.typed", "protos/ganserve/v1/generator_pb2.py", "protos/ganserve/v1/generator.proto"} <= set(names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = sorted(line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Requires-Dist"))
    assert [r for r in requires if "extra ==" not in r] == ["grpcio>=1.63.0", "numpy>=1.26", "protobuf<8,>=5.26.1"]


def _wheelhouse(pins: tuple[str, str, str]) -> None:
    grpcio, protobuf, numpy = pins
    if all(list(WHEELHOUSE.glob(f"{name}-{version}-*.whl")) for name, version in
           (("grpcio", grpcio), ("protobuf", protobuf), ("numpy", numpy))):
        return  # fetched by an earlier run (their own dependencies with them)
    done = _pip(sys.executable, "download", "-q", "--only-binary=:all:", "-d", str(WHEELHOUSE), f"grpcio=={grpcio}",
                f"protobuf=={protobuf}", f"numpy=={numpy}")
    if done.returncode != 0:
        message = f"could not fetch the SDK's dependency wheels into {WHEELHOUSE}: {done.stderr.strip()[-300:]}"
        if os.environ.get("GANSERVE_CI"):
            pytest.fail(message)
        pytest.skip(message)


CALLS = textwrap.dedent("""
    import importlib.util, json, sys
    import google.protobuf, grpc
    from sdk import AsyncClient, Client, InvalidArgumentError
    x = Client().sample(label=7)                          # the product card's one-liner, $GANSERVE_TARGET set
    try:
        Client().sample(label=12)
        raise SystemExit("label 12 was accepted")
    except InvalidArgumentError as e:
        field = e.field                                   # google.rpc.BadRequest read without googleapis protos
    import asyncio
    async def main():
        async with AsyncClient() as c:
            return (await c.sample(2, seed=1, model="gan-ring8")).shape
    absent = [m for m in sys.argv[1:] if importlib.util.find_spec(m.split(".")[0]) is not None
              and importlib.util.find_spec(m) is not None]
    print(json.dumps({"shape": list(x.shape), "dtype": str(x.dtype), "min": float(x.min()), "max": float(x.max()),
                      "field": field, "points": list(asyncio.run(main())), "present": absent,
                      "protobuf": google.protobuf.__version__, "grpcio": grpc.__version__,
                      "sdk_file": sys.modules["sdk"].__file__}))
""")


@pytest.mark.parametrize("end", sorted(ENDS))
def test_thin_sdk_in_a_fresh_venv_calls_a_real_server(end, wheel, shipped_server, tmp_path):
    pins = ENDS[end]
    _wheelhouse(pins)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # this environment's pip installs into it (--python): no ensurepip
    python = env_dir / "bin" / "python"
    grpcio, protobuf, numpy = pins
    done = _pip(sys.executable, "--python", str(python), "install", "-q", "--no-index", "--find-links", str(WHEELHOUSE), str(wheel),
                f"grpcio=={grpcio}", f"protobuf=={protobuf}", f"numpy=={numpy}")
    assert done.returncode == 0, done.stderr
    listed = _pip(sys.executable, "--python", str(python), "list", "--format=json")
    installed = {d["name"].lower().replace("_", "-") for d in json.loads(listed.stdout)}
    # the three dependencies and what they pull themselves (grpcio: typing-extensions), nothing else
    assert {"ganserve-sdk", "grpcio", "protobuf", "numpy"} <= installed <= {
        "ganserve-sdk", "grpcio", "protobuf", "numpy", "typing-extensions"}, installed

    run = subprocess.run([str(python), "-c", CALLS, *SERVER_STACK], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PATH": os.environ["PATH"], "GANSERVE_TARGET": shipped_server.target})
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["sdk_file"].startswith(str(env_dir))  # the installed copy, not the repository's
    assert (got["protobuf"], got["grpcio"]) == (protobuf, grpcio)
    assert got["present"] == []  # onnxruntime, scipy, torch, Pillow, ... are absent
    assert got["shape"] == [1, 1, 28, 28] and got["dtype"] == "float32" and -1 <= got["min"] < got["max"] <= 1
    assert got["field"] == "labels[0]" and got["points"] == [2, 2]
