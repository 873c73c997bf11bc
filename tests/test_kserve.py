"""The KServe deployment (deploy/kserve/): the manifest and the Dockerfile agree with each other and with the server,
and the image's entrypoint, run with the image's settings, serves v2 and drains on SIGTERM.

No container engine or Kubernetes runs here (docs/open_inference_protocol.md, "Deploying on KServe"): the image
itself is built only where docker, podman or buildah answers; everything else is checked from the files.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from server.config import ENV_PREFIX, Config, from_args
from tests.conftest import free_port
from tests.test_server_shipped_models import _need

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kserve"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/kserve/Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def image_env() -> dict[str, str]:
    env = {}
    for word, rest in dockerfile():
        if word == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def manifest() -> tuple[dict, dict]:
    runtime, isvc = yaml.safe_load_all((DEPLOY / "inferenceservice.yaml").read_text())
    return runtime, isvc


def test_inference_service_uses_the_runtime_over_v2():
    runtime, isvc = manifest()
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    predictor = isvc["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    model = predictor["model"]
    assert model["protocolVersion"] == "v2" and model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert "v2" in runtime["spec"]["protocolVersions"]


def test_runtime_container_matches_the_image_and_the_server():
    runtime, _ = manifest()
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    env = {**image_env(), **{e["name"]: e["value"] for e in container.get("env", [])}}
    config = from_args([], env=env)  # the settings the container runs with parse, as the server reads them
    (port,) = container["ports"]
    assert port["containerPort"] == config.http_port == 8080 and config.http_address == "0.0.0.0"
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": config.http_port}
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == str(config.metrics_port)
    assert container["securityContext"]["runAsNonRoot"] and container["securityContext"]["runAsUser"] != 0
    version = next(line.split('"')[1] for line in (ROOT / "pyproject.toml").read_text().splitlines()
                   if line.startswith("version = "))
    assert container["image"] == f"ganserve:{version}"
    assert f"-t ganserve:{version} ." in (DEPLOY / "Dockerfile").read_text()


def test_dockerfile_settings_are_server_settings_and_its_sources_exist():
    instructions = dockerfile()
    known = {ENV_PREFIX + f.name.upper() for f in fields(Config)}
    env = image_env()
    assert {k for k in env if k.startswith(ENV_PREFIX)} <= known, "a GANSERVE_* variable the server does not read"
    config = from_args([], env=env)
    assert (config.address, config.http_port, config.store) == ("0.0.0.0:8081", 8080, "/opt/ganserve/model_store")
    exposed = {int(p) for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
    assert exposed == {config.http_port, int(config.address.rsplit(":", 1)[1]), config.metrics_port}
    for word, rest in instructions:
        if word == "COPY":
            *sources, _ = rest.split()
            assert all((ROOT / s).exists() for s in sources), rest
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("0", "root")
    (entrypoint,) = [json.loads(rest) for word, rest in instructions if word == "ENTRYPOINT"]
    assert entrypoint == ["python", "-m", "server"]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_image_entrypoint_serves_v2_and_drains_on_sigterm():
    """The image's command with the image's variables; only where it listens and which store it reads are this
    machine's (the image's store is this repository's model_store/, copied in)."""
    _need("cgan-mnist")
    (entrypoint,) = [json.loads(rest) for word, rest in dockerfile() if word == "ENTRYPOINT"]
    http_port = free_port()
    env = {**os.environ, **image_env(), "GANSERVE_ADDRESS": f"127.0.0.1:{free_port()}",
           "GANSERVE_HTTP_ADDRESS": "127.0.0.1", "GANSERVE_HTTP_PORT": str(http_port),
           "GANSERVE_METRICS_PORT": "-1", "GANSERVE_STORE": str(ROOT / "model_store"), "GANSERVE_DRAIN_S": "5"}
    command = [sys.executable if entrypoint[0] == "python" else entrypoint[0], *entrypoint[1:]]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base, deadline = f"http://127.0.0.1:{http_port}", time.monotonic() + 120
        while True:
            try:
                if _get(f"{base}/v2/health/ready")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the entrypoint did not become ready"
            time.sleep(0.2)
        status, body = _get(f"{base}/v2/models/cgan-mnist")
        assert status == 200 and json.loads(body)["outputs"][0]["shape"] == [-1, 1, 28, 28]
        request = json.dumps({"inputs": [{"name": "seed", "datatype": "INT64", "shape": [1], "data": [1]},
                                         {"name": "labels", "datatype": "INT64", "shape": [1], "data": [3]}]}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{base}/v2/models/cgan-mnist/infer", data=request),
                                    timeout=30) as resp:
            assert json.loads(resp.read())["outputs"][0]["shape"] == [1, 1, 28, 28]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log = proc.stderr.read()
        assert all(json.loads(line)["level"] for line in log.splitlines() if line.startswith("{"))  # JSON logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _engine() -> str | None:
    """A container engine that answers (a docker client without its daemon does not count)."""
    for engine in ("docker", "podman", "buildah"):
        if shutil.which(engine):
            probe = [engine, "info"] if engine != "buildah" else [engine, "version"]
            if subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0:
                return engine
    return None


def test_the_image_builds_where_a_container_engine_runs():
    engine = _engine()
    if engine is None:
        pytest.skip("no working container engine (docker, podman, buildah) on this machine: the entrypoint test "
                    "above runs the image's command instead")
    verb = ["bud"] if engine == "buildah" else ["build"]
    done = subprocess.run([engine, *verb, "-f", str(DEPLOY / "Dockerfile"), "-t", "ganserve:test", str(ROOT)],
                          capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
