"""`python -m sdk.batch`: sharded .npz files equal to Sample, a manifest with checksums, identical shards for the
same seed, and resumption after SIGKILL that skips (verified) finished shards."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sdk import Client

ROOT = Path(__file__).resolve().parent.parent


def batch(server, out, *args, wait=True):
    env = dict(os.environ, GANSERVE_TARGET=server.target)
    cmd = [sys.executable, "-m", "sdk.batch", "--out", str(out), *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shards_equal_sample_and_are_reproducible(server, tmp_path):
    a = batch(server, tmp_path / "a", "--model", "tiny-cgan", "--n", 2500, "--seed", 7, "--labels", 1, 3,
              "--shard-size", 1000, "--chunk-size", 300)
    assert a.returncode == 0, a.stderr
    assert "3 shards, 2500 samples of tiny-cgan@1 (seed 7)" in a.stdout
    assert "sample/s" in a.stderr  # the progress bar reports a rate
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert (m["model"], m["seed"], m["n"], m["labels"], m["complete"]) == ("tiny-cgan@1", 7, 2500, [1, 3], True)
    assert [(s["start"], s["count"]) for s in m["shards"].values()] == [(0, 1000), (1000, 1000), (2000, 500)]
    for s in m["shards"].values():
        assert sha(tmp_path / "a" / s["file"]) == s["sha256"]
    shard = np.load(tmp_path / "a" / "shard-00002.npz")
    labels = [1 if i % 2 == 0 else 3 for i in range(2500)]
    with Client(server.target) as c:
        ref = np.concatenate([chunk.images for chunk in c.stream(2500, labels=labels, seed=7, model="tiny-cgan")])
    np.testing.assert_array_equal(shard["samples"], ref[2000:])
    np.testing.assert_array_equal(shard["labels"], labels[2000:])
    assert int(shard["start"]) == 2000
    b = batch(server, tmp_path / "b", "--model", "tiny-cgan", "--n", 2500, "--seed", 7, "--labels", 1, 3,
              "--shard-size", 1000, "--quiet")
    assert b.returncode == 0
    for name in ("shard-00000.npz", "shard-00001.npz", "shard-00002.npz"):
        assert sha(tmp_path / "a" / name) == sha(tmp_path / "b" / name)  # byte-identical, chunking aside


def test_resume_after_sigkill(server, tmp_path):
    out = tmp_path / "job"
    args = ["--model", "tiny-gan", "--n", 40_000, "--seed", 11, "--shard-size", 2000, "--chunk-size", 32, "--quiet"]
    proc = batch(server, out, *args, wait=False)
    manifest = out / "manifest.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if manifest.exists() and json.loads(manifest.read_text())["shards"]:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = json.loads(manifest.read_text())["shards"]
    assert 1 <= len(done_before) < 20, len(done_before)  # killed mid-job
    # a shard that was being written is at most a hidden temporary file; corrupt one finished shard too
    first = out / done_before["0"]["file"]
    first.write_bytes(first.read_bytes()[:-10])
    r = batch(server, out, *args)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {len(done_before) - 1} of 20 shards already done and verified" in r.stderr
    assert f"skipped {len(done_before) - 1} finished shard(s)" in r.stdout
    m = json.loads(manifest.read_text())
    assert m["complete"] and len(m["shards"]) == 20
    ref = batch(server, tmp_path / "ref", *args)  # uninterrupted run: the same bytes
    assert ref.returncode == 0
    ref_m = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert {k: s["sha256"] for k, s in m["shards"].items()} == {k: s["sha256"] for k, s in ref_m["shards"].items()}
    assert not list(out.glob(".*.tmp"))


def test_a_different_job_in_the_same_folder_is_refused(server, tmp_path):
    assert batch(server, tmp_path, "--model", "tiny-gan", "--n", 10, "--seed", 1, "--quiet").returncode == 0
    r = batch(server, tmp_path, "--model", "tiny-gan", "--n", 20, "--seed", 1, "--quiet")
    assert r.returncode == 1 and "holds a different job (n: 10 vs 20)" in r.stderr


def test_ctrl_c_says_how_far_and_how_to_resume(server, tmp_path):
    """SIGINT (Ctrl-C) mid-job: one line with the shards done and the way to resume, exit 130, no traceback."""
    out = tmp_path / "job"
    # 3,000 shards: far more than the job can make between its first shard and the signal, even when this test
    # process waits seconds for a core (with 300 a loaded CI machine once saw the whole job finish first)
    proc = batch(server, out, "--model", "tiny-gan", "--n", 30_000_000, "--seed", 1, "--shard-size", 10_000,
                 "--chunk-size", 4096, "--quiet", wait=False)
    manifest = out / "manifest.json"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (manifest.exists() and json.loads(manifest.read_text())["shards"]):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()  # (a job that ignored the signal must not outlive the test)
    done = len(json.loads(manifest.read_text())["shards"])
    assert proc.returncode == 130, stderr
    assert stderr.strip() == f"interrupted: {done}/3000 shards done - rerun the same command to resume"
    assert 1 <= done < 3000 and "Traceback" not in stderr


def test_an_fsspec_url_gets_the_same_files_and_resumes_on_their_sha256(server, tmp_path, monkeypatch, capsys):
    """--out memory://...: the job runs in this process (memory:// is per process), its files byte for byte those
    of a folder; a shard removed and one cut short are made again, the others skipped after their sha256."""
    fsspec = pytest.importorskip("fsspec")
    from sdk import batch as job  # (in this process: memory:// is per process)

    memory, url = fsspec.filesystem("memory"), f"memory://batch-{tmp_path.name}/job"
    root = url.removeprefix("memory:/")
    args = ["--model", "tiny-cgan", "--n", 2500, "--seed", 5, "--labels", 2, 0, "--shard-size", 1000, "--quiet"]
    ref = batch(server, tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr
    want = {p.name: p.read_bytes() for p in sorted((tmp_path / "ref").iterdir())}
    monkeypatch.setenv("GANSERVE_TARGET", server.target)
    try:
        assert job.main(["--out", url, *map(str, args)]) == 0
        got = {path.rsplit("/", 1)[1]: memory.cat_file(path) for path in sorted(memory.ls(root, detail=False))}
        assert got == want  # shards and manifest, byte for byte; no temporary file left
        memory.rm(f"{root}/shard-00001.npz")
        memory.pipe_file(f"{root}/shard-00002.npz", want["shard-00002.npz"][:-10])
        capsys.readouterr()
        assert job.main(["--out", url, *map(str, args)]) == 0
        printed = capsys.readouterr()
        assert "resuming: 1 of 3 shards already done and verified" in printed.err
        assert "made 1500 in" in printed.out and "skipped 1 finished shard(s)" in printed.out
        assert {path.rsplit("/", 1)[1]: memory.cat_file(path) for path in memory.ls(root, detail=False)} == want
        assert job.main(["--out", url, "--model", "tiny-cgan", "--n", "10", "--labels", "1", "--quiet"]) == 1
        assert "holds a different job (n: 2500 vs 10" in capsys.readouterr().err
    finally:
        memory.rm(root.rsplit("/", 1)[0], recursive=True)


def test_an_output_url_whose_file_system_is_not_installed_is_one_line(monkeypatch, capsys):
    """`--out s3://...` without s3fs: fsspec's ImportError becomes the batch job's one-line error (exit 1) naming
    the package, before any connection (no server here), instead of a traceback."""
    fsspec = pytest.importorskip("fsspec")
    from sdk import batch as job

    def not_installed(url, **kwargs):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec.core, "url_to_fs", not_installed)
    assert job.main(["--out", "s3://bucket/job", "--model", "gan-mnist", "--n", "10", "--target", "localhost:1"]) == 1
    assert capsys.readouterr().err == (
        "error: --out s3://bucket/job: Install s3fs to access S3 (pip install it beside fsspec)\n")
