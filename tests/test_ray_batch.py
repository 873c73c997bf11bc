"""`python -m sdk.batch --engine ray` on a two-node local Ray cluster (loopback, one CPU per node, workers on
half a CPU): shards and manifest byte-identical to the single-machine job, and a killed worker's shards made by
a re-run that skips the verified ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

ray_cluster_utils = pytest.importorskip("ray.cluster_utils", reason="the Ray engine needs: pip install -e '.[ray]'")

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine (a head and a worker node), one CPU each, loopback only."""
    c = ray_cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        c.wait_for_nodes(timeout=120)
        yield c
    finally:
        c.shutdown()


def batch(out, *args, target=None, wait=True):
    env = dict(os.environ, **({"GANSERVE_TARGET": target} if target else {}))
    cmd = [sys.executable, "-m", "sdk.batch", "--out", str(out), "--quiet", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def on_ray(cluster, model_store, *args):
    return ["--engine", "ray", "--address", cluster.address, "--store", model_store, *args]


JOB = ["--model", "tiny-cgan", "--n", 20_000, "--seed", 5, "--labels", 2, 0, 3, "--shard-size", 2000]


def test_two_nodes_make_the_single_machine_bytes(cluster, server, model_store, tmp_path):
    ref = batch(tmp_path / "grpc", *JOB, target=server.target)
    assert ref.returncode == 0, ref.stderr
    r = batch(tmp_path / "ray", *on_ray(cluster, model_store, "--workers", 4), *JOB)
    assert r.returncode == 0, r.stderr
    assert "ray: 10 shard(s) on 2 node(s)" in r.stderr  # both nodes worked
    assert "10 shards, 20000 samples of tiny-cgan@1 (seed 5)" in r.stdout
    want, got = files(tmp_path / "grpc"), files(tmp_path / "ray")
    assert list(got) == ["manifest.json"] + [f"shard-{i:05d}.npz" for i in range(10)]
    assert got == want  # shards and manifest, byte for byte


def test_soft_labels_uint8_and_refusals_as_the_single_machine_job(cluster, server, model_store, tmp_path):
    job = ["--model", "tiny-cgan", "--n", 2500, "--seed", 8, "--soft-labels", 0.5, 0.25, 0, 0.25, "--shard-size", 1000,
           "--encoding", "uint8"]
    ref = batch(tmp_path / "grpc", *job, target=server.target)
    assert ref.returncode == 0, ref.stderr
    r = batch(tmp_path / "ray", *on_ray(cluster, model_store), *job)
    assert r.returncode == 0, r.stderr
    assert files(tmp_path / "ray") == files(tmp_path / "grpc")
    with np.load(tmp_path / "ray" / "shard-00002.npz") as shard:
        assert shard["samples"].dtype == np.uint8 and shard["samples"].shape == (500, 1, 8, 8)
        np.testing.assert_array_equal(shard["soft_labels"], np.float32([0.5, 0.25, 0, 0.25]))
    bad = batch(tmp_path / "bad", *on_ray(cluster, model_store), "--model", "tiny-cgan", "--n", 10, "--labels", 9)
    assert bad.returncode == 1 and "labels: must be in 0..3, got 9" in bad.stderr, bad.stderr
    bad = batch(tmp_path / "bad2", *on_ray(cluster, model_store), "--model", "tiny-gan@7", "--n", 10)
    assert bad.returncode == 1 and "tiny-gan" in bad.stderr and "@7" in bad.stderr, bad.stderr


def _shard_makers() -> list[psutil.Process]:
    """This test's cluster's worker processes running ShardMaker actors (Ray titles them ray::ShardMaker...);
    the cluster's nodes are children of this process."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any("ray::ShardMaker" in part for part in p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_a_killed_worker_leaves_missing_shards_that_a_rerun_makes(cluster, server, model_store, tmp_path):
    out = tmp_path / "job"
    job = ["--model", "tiny-cgan", "--n", 20_000, "--seed", 9, "--labels", 1, "--shard-size", 1000]
    # One sample per generator run makes each shard take ~0.1 s, so the kill lands mid-job; no retries.
    proc = batch(out, *on_ray(cluster, model_store, "--workers", 2, "--retries", 0, "--chunk-size", 1), *job, wait=False)
    manifest = out / "manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and json.loads(manifest.read_text())["shards"]:
            break
        time.sleep(0.01)
    victims = _shard_makers()
    assert victims, "no ShardMaker worker process found"
    victims[0].send_signal(signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "shard(s) not made" in stderr and "worker died" in stderr, stderr
    done = json.loads(manifest.read_text())["shards"]
    assert 1 <= len(done) < 20, len(done)
    r = batch(out, *on_ray(cluster, model_store), *job)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {len(done)} of 20 shards already done and verified" in r.stderr
    assert f"skipped {len(done)} finished shard(s)" in r.stdout
    assert f"ray: {20 - len(done)} shard(s) on" in r.stderr  # only the missing shards were made
    ref = batch(tmp_path / "ref", *job, target=server.target)
    assert ref.returncode == 0, ref.stderr
    assert files(out) == files(tmp_path / "ref")


def test_an_fsspec_url_out_gets_the_same_files(cluster, server, model_store, tmp_path):
    """--out file:///...: the workers write through fsspec (as to s3://), the files are the single-machine job's;
    memory:// (this process's own) is refused before any worker starts."""
    job = ["--model", "tiny-cgan", "--n", 2500, "--seed", 3, "--labels", 1, "--shard-size", 1000]
    ref = batch(tmp_path / "grpc", *job, target=server.target)
    assert ref.returncode == 0, ref.stderr
    r = batch((tmp_path / "url").as_uri(), *on_ray(cluster, model_store), *job)
    assert r.returncode == 0, r.stderr
    assert files(tmp_path / "url") == files(tmp_path / "grpc")
    bad = batch("memory://job", *on_ray(cluster, model_store), *job)
    assert bad.returncode == 1 and "the Ray workers cannot write there" in bad.stderr, bad.stderr
