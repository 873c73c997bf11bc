"""The repository index over a real server: states and reasons, the version policy changed without a restart,
the quality gate, promote/rollback under load (no dropped or mixed requests), lazy loading and LRU eviction
within the model-memory budget, and the Prometheus gauges."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench.many_models import build_store
from ganserve.store import manifest as mf
from ganserve.store import policy as P
from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from sdk import Client, NotFoundError
from tests.conftest import publish_gan, start_server
from tests.test_server_reliability import _wait
from tests.test_store_faults import _bad_generator

GOOD = {"frechet": 3.0, "precision": 0.8}
WORSE = {"frechet": 30.0, "precision": 0.2}


def _republish(store: Path, tmp: Path, *, metrics: dict, seed: int = 0, onnx: str = "", **extra) -> int:
    """A new tiny-gan version (weights from `seed`) with these judged figures; `onnx`: a broken generator."""
    src = publish_gan(tmp / f"s{seed}", tmp / f"b{seed}", seed=seed)
    m = mf.read_manifest(src)
    files = {f: src / f for f in m["files"]}
    if onnx:
        files["generator.onnx"] = _bad_generator(tmp / f"{onnx}.onnx", onnx)
    return int(mf.publish(store, {**m, "metrics": metrics, **extra}, files).name)


def _stub(target):
    channel = grpc.insecure_channel(target)
    return channel, pb_grpc.GeneratorServiceStub(channel)


def _index(stub, name="tiny-gan"):
    models = stub.ListModels(pb.ListModelsRequest(index=True)).models
    return {m.version: (pb.VersionState.Name(m.state).removeprefix("VERSION_STATE_"), m.state_reason, m.is_default, m.resident)
            for m in models if m.name == name}


def test_index_states_gate_policy_file_and_gauges(tmp_path):
    store = tmp_path / "store"
    assert _republish(store, tmp_path, metrics=GOOD) == 1
    assert _republish(store, tmp_path, metrics=WORSE, seed=1) == 2
    assert _republish(store, tmp_path, metrics=GOOD, seed=2, onnx="nan") == 3
    assert _republish(store, tmp_path, metrics=GOOD, seed=3, candidate="smoke run: 100 steps") == 4
    running = start_server(store, reload_interval_s=0.1, metrics_port=0)
    channel, stub = _stub(running.target)
    try:
        idx = _index(stub)
        assert idx[1] == ("READY", "", True, True)
        assert idx[2][0] == "CANDIDATE" and idx[2][1].startswith("quality gate: frechet 30 vs @1's 3 (tolerance 10%)")
        assert idx[3][0] == "UNAVAILABLE" and "non-finite" in idx[3][1]
        assert idx[4][:2] == ("CANDIDATE", "published as a candidate: smoke run: 100 steps")
        info = stub.GetModel(pb.GetModelRequest(model="tiny-gan"))
        assert info.version == 1 and info.is_default and list(info.available_versions) == [1, 2, 4]
        assert [(v.version, pb.VersionState.Name(v.state).removeprefix("VERSION_STATE_")) for v in info.versions] == [
            (1, "READY"), (2, "CANDIDATE"), (3, "UNAVAILABLE"), (4, "CANDIDATE")]
        assert stub.Sample(pb.SampleRequest(model="tiny-gan@2", n=1, seed=0)).model == "tiny-gan@2"  # callable
        assert [m.version for m in stub.ListModels(pb.ListModelsRequest()).models if m.name == "tiny-gan"] == [1]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{running.app.metrics_port}/metrics").read().decode()
        assert 'ganserve_model_version_state{model="tiny-gan",reason="",state="READY",version="1"} 1.0' in metrics
        assert 'ganserve_model_default_version{model="tiny-gan"} 1.0' in metrics
        assert 'ganserve_model_quality{figure="frechet",model="tiny-gan",version="2"} 30.0' in metrics
        assert 'state="UNAVAILABLE",version="3"} 1.0' in metrics

        P.write(store / "tiny-gan", P.promote(P.Policy(), 2))  # promote: no restart
        _wait(lambda: stub.GetModel(pb.GetModelRequest(model="tiny-gan")).version == 2, what="promoted @2")
        P.write(store / "tiny-gan", P.rollback(P.read(store / "tiny-gan"), 2, 1))
        _wait(lambda: stub.GetModel(pb.GetModelRequest(model="tiny-gan")).version == 1, what="rolled back to @1")
        assert _index(stub)[2][:2] == ("RETIRED", "rolled back")
        with pytest.raises(grpc.RpcError) as err:
            stub.Sample(pb.SampleRequest(model="tiny-gan@2", n=1))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "tiny-gan@2 is RETIRED: rolled back" in err.value.details()
        P.write(store / "tiny-gan", P.Policy("pinned", version=4))
        _wait(lambda: stub.GetModel(pb.GetModelRequest(model="tiny-gan")).version == 4, what="pinned @4")
    finally:
        channel.close()
        running.app.stop(0)


def test_version_policy_flag_and_gate_off(tmp_path):
    store = tmp_path / "store"
    _republish(store, tmp_path, metrics=GOOD)
    _republish(store, tmp_path, metrics=WORSE, seed=1)
    for overrides, want in (({"version_policy": "tiny-gan=specific:1"}, 1), ({"quality_gate": False}, 2)):
        running = start_server(store, reload_interval_s=0, metrics_port=-1, **overrides)
        channel, stub = _stub(running.target)
        try:
            assert stub.GetModel(pb.GetModelRequest(model="tiny-gan")).version == want
        finally:
            channel.close()
            running.app.stop(0)


def test_promote_and_rollback_under_load_drop_and_mix_nothing(tmp_path):
    store = tmp_path / "store"
    _republish(store, tmp_path, metrics=GOOD)
    _republish(store, tmp_path, metrics=WORSE, seed=1)
    running = start_server(store, reload_interval_s=0.02, metrics_port=-1)
    channel, stub = _stub(running.target)
    expected = {v: tensors.to_array(stub.Sample(pb.SampleRequest(model=f"tiny-gan@{v}", n=4, seed=7)).samples)
                for v in (1, 2)}
    assert not np.allclose(expected[1], expected[2])
    seen, problems, stop = {1: 0, 2: 0}, [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                r = stub.Sample(pb.SampleRequest(model="tiny-gan", n=4, seed=7))
                v = int(r.model.split("@")[1])
                if not np.array_equal(tensors.to_array(r.samples), expected[v]):
                    problems.append(f"mixed samples from {r.model}")
                seen[v] += 1
            except grpc.RpcError as e:
                problems.append(f"{e.code()}: {e.details()}")

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        policy = P.Policy()
        for _ in range(4):
            policy = P.promote(policy, 2)
            P.write(store / "tiny-gan", policy)
            _wait(lambda: stub.GetModel(pb.GetModelRequest(model="tiny-gan")).version == 2, what="promoted")
            policy = P.rollback(policy, 2, 1)
            P.write(store / "tiny-gan", policy)
            _wait(lambda: stub.GetModel(pb.GetModelRequest(model="tiny-gan")).version == 1, what="rolled back")
    finally:
        stop.set()
        for t in threads:
            t.join()
        channel.close()
        running.app.stop(0)
    assert problems == [] and seen[1] > 0 and seen[2] > 0


def test_lazy_load_and_lru_eviction_within_the_budget(tmp_path):
    store, build = tmp_path / "store", tmp_path / "build"
    for i in range(30):
        publish_gan(store, build, name=f"m{i:02d}", seed=i, extras=False)
    cost = (store / "m00" / "1" / "generator.onnx").stat().st_size
    budget_mb = 5.5 * cost / 2**20  # room for five models
    running = start_server(store, reload_interval_s=0, metrics_port=-1, warm_models="m00",
                           model_memory_mb=budget_mb)
    channel, stub = _stub(running.target)
    try:
        resident = lambda: {m.name for m in stub.ListModels(pb.ListModelsRequest(index=True)).models if m.resident}
        assert resident() == {"m00"}  # the warm set only
        rng = random.Random(0)
        for _ in range(60):
            name = f"m{rng.randrange(30):02d}"
            r = stub.Sample(pb.SampleRequest(model=name, n=2, seed=1))
            assert r.model == f"{name}@1"
            now = resident()
            assert "m00" in now and name in now and len(now) <= 5
        reg = running.app.registry
        assert sum(e.cost for e in reg.entries() if e.model is not None) <= budget_mb * 2**20
    finally:
        channel.close()
        running.app.stop(0)


def test_a_store_of_1000_generators_starts_in_seconds_and_stays_within_budget(tmp_path):
    """The bar: 1,000 small generators start in < 5 s (the server's start in this process, imports
    excluded: bench.many_models measures from spawn too), and a client sampling 200 of them at random keeps
    the resident graphs within --model-memory-mb."""

    size = build_store(tmp_path / "store", 1000, tmp_path)
    budget_mb = 40 * size / 2**20  # room for 40 models
    t = time.perf_counter()
    running = start_server(tmp_path / "store", reload_interval_s=0, metrics_port=-1, warm_models="none",
                           model_memory_mb=budget_mb)
    start_s = time.perf_counter() - t
    channel, stub = _stub(running.target)
    try:
        assert start_s < 5.0, f"start-up took {start_s:.2f} s"
        assert len(stub.ListModels(pb.ListModelsRequest()).models) == 1000
        rng = random.Random(1)
        chosen = rng.sample(range(1000), 200)
        for i in range(300):
            name = f"m{chosen[rng.randrange(200)]:04d}"
            assert stub.Sample(pb.SampleRequest(model=name, n=1, seed=i)).model == f"{name}@1"
            if i % 25 == 0:
                resident = sum(e.cost for e in running.app.registry.entries() if e.model is not None)
                assert resident <= budget_mb * 2**20
        assert 30 <= len(running.app.registry.models(all_versions=True)) <= 40
    finally:
        channel.close()
        running.app.stop(0)


def test_sdk_and_cli_show_states_and_the_servers_reason(tmp_path):

    store = tmp_path / "store"
    _republish(store, tmp_path, metrics=GOOD)
    _republish(store, tmp_path, metrics=WORSE, seed=1)
    _republish(store, tmp_path, metrics=GOOD, seed=2, onnx="fixed-batch-inside")
    running = start_server(store, reload_interval_s=0, metrics_port=-1)
    try:
        with Client(running.target) as c:
            with pytest.raises(NotFoundError) as err:
                c.sample(1, model="tiny-gan@3")
            assert err.value.field == "model" and err.value.reason.startswith("tiny-gan@3 is UNAVAILABLE: graphs.generator")
            index = {m.version: m for m in c.list_models(index=True) if m.name == "tiny-gan"}
            assert [(v, index[v].state, index[v].is_default) for v in (1, 2, 3)] == [
                (1, "READY", True), (2, "CANDIDATE", False), (3, "UNAVAILABLE", False)]
            assert index[2].state_reason.startswith("quality gate: frechet 30")
            assert [(v.version, v.state) for v in c.get_model("tiny-gan").versions] == [
                (1, "READY"), (2, "CANDIDATE"), (3, "UNAVAILABLE")]
        env = dict(os.environ, GANSERVE_TARGET=running.target, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        out = subprocess.run([sys.executable, "-m", "sdk", "models", "--index"], env=env, capture_output=True, text=True,
                             timeout=120).stdout
        rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("tiny-gan")}
        assert "READY*" in rows["1"] and "CANDIDATE (quality gate: frechet 30" in rows["2"]
        assert "UNAVAILABLE (graphs.generator fails on a probe batch of 2" in rows["3"]
    finally:
        running.app.stop(0)
