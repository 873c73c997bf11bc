"""The deployment files of docs/scaling_out.md, parsed and checked field by field (no cluster runs here):
deploy/ray/serve.yaml against Ray Serve's own schema and our server's settings, deploy/kserve/shared-store.yaml
against the server's settings, its volume claim and the ServingRuntime it names."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from server.config import ENV_PREFIX, Config

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {f.name for f in fields(Config)}


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_serve_config_is_valid_for_serve_and_builds_our_app():
    schema = pytest.importorskip("ray.serve.schema", reason="needs: pip install -e '.[ray]'")
    from server import ray_serve

    raw = yaml.safe_load((ROOT / "deploy/ray/serve.yaml").read_text())
    config = schema.ServeDeploySchema.model_validate(raw)
    assert config.grpc_options.grpc_servicer_functions == ray_serve.SERVICER_FUNCTIONS
    assert config.http_options.host == "127.0.0.1"
    (app,) = config.applications
    assert app.import_path == "server.ray_serve:build"
    assert set(app.args) <= SETTINGS, set(app.args) - SETTINGS
    settings = ray_serve.settings(app.args)
    assert (settings.store, settings.reload_interval_s, settings.metrics_port) == ("model_store", 2.0, -1)
    (deployment,) = app.deployments
    assert deployment.name == ray_serve.Ganserve.name
    scaling = deployment.autoscaling_config
    assert 1 <= scaling["min_replicas"] < scaling["max_replicas"]
    assert 0 < scaling["target_ongoing_requests"] <= deployment.max_ongoing_requests
    assert type(ray_serve.build(app.args)).__name__ == "Application"


def test_serve_settings_refuse_what_the_server_refuses():
    pytest.importorskip("ray.serve", reason="needs: pip install -e '.[ray]'")
    from server import ray_serve

    with pytest.raises(ValueError, match="bad ganserve settings"):
        ray_serve.settings({"reload_interval_s": "soon"})
    with pytest.raises(ValueError, match="bad ganserve settings"):
        ray_serve.settings({"no_such_setting": 1})
    with pytest.raises(ValueError, match="bad ganserve settings"):  # a token in a config file: refused as a flag is
        ray_serve.settings({"auth_token": "s3cret"})
    with pytest.raises(ValueError, match="terminate TLS in front"):  # Serve's proxies hold the connections
        ray_serve.settings({"tls_cert": "cert.pem", "tls_key": "key.pem"})


def test_serve_replicas_take_the_token_as_the_server_does(monkeypatch, tmp_path):
    pytest.importorskip("ray.serve", reason="needs: pip install -e '.[ray]'")
    from server import ray_serve

    assert ray_serve.settings({}).token() == ""
    (tmp_path / "token").write_text("from-a-file\n")
    assert ray_serve.settings({"auth_token_file": str(tmp_path / "token")}).token() == "from-a-file"
    monkeypatch.setenv(ENV_PREFIX + "AUTH_TOKEN", "from-the-environment")  # (what `ray start` hands its workers)
    assert ray_serve.settings({}).token() == "from-the-environment"


def test_kserve_shared_store():
    claim, service = docs(ROOT / "deploy/kserve/shared-store.yaml")
    assert (claim["kind"], service["kind"]) == ("PersistentVolumeClaim", "InferenceService")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    predictor = service["spec"]["predictor"]
    assert 2 <= predictor["minReplicas"] < predictor["maxReplicas"]
    assert predictor["scaleMetric"] == "concurrency"
    assert 0 < predictor["scaleTarget"] <= predictor["containerConcurrency"]
    model = predictor["model"]
    assert model["storageUri"].startswith(f"pvc://{claim['metadata']['name']}/")
    env = {e["name"]: e["value"] for e in model["env"]}
    assert env["GANSERVE_STORE"] == "/mnt/models"  # where KServe mounts a storageUri
    for name, value in env.items():  # every variable is a server setting, and its value parses
        field = name.removeprefix(ENV_PREFIX).lower()
        assert name.startswith(ENV_PREFIX) and field in SETTINGS, name
        Config(**{field: type(getattr(Config(), field))(value)})
    runtimes = ROOT / "deploy/kserve/inferenceservice.yaml"
    if runtimes.exists():  # the ServingRuntime this service runs on
        names = [d["metadata"]["name"] for d in docs(runtimes) if d["kind"] == "ServingRuntime"]
        assert model["runtime"] in names
        formats = [f["name"] for d in docs(runtimes) if d["kind"] == "ServingRuntime"
                   for f in d["spec"]["supportedModelFormats"]]
        assert model["modelFormat"]["name"] in formats
