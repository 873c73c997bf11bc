"""ganserve/store/manifest.py's publish and verify_files at their edges: the hidden temporary folder, the retry
for a free version number, what is written (format, key order), a failure after the rename, every graph file's
external data checked, the refusal message's cut-off. Fast: tiny files in tmp_path."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ganserve.store import manifest as mf
from ganserve.store.manifest import ManifestError
from tests.test_manifest import SHA, SPEC, base


def _src(tmp_path):
    src = tmp_path / "g.onnx"
    src.write_bytes(b"bytes")
    return src


def test_the_version_is_written_in_a_hidden_folder_inside_the_models_folder(tmp_path, monkeypatch):
    store, copies, real = tmp_path / "store", [], shutil.copyfile
    monkeypatch.setattr(mf.shutil, "copyfile", lambda s, d: copies.append(d) or real(s, d))
    mf.publish(store, base(), {"generator.onnx": _src(tmp_path)})
    (dest,) = copies
    assert dest.parent.parent == store / "m" and dest.parent.name.startswith(".tmp-") and dest.name == "generator.onnx"


def test_a_taken_number_is_retried_100_times_then_refused(tmp_path, monkeypatch):
    tries = []

    def rename(a, b):
        tries.append(b)
        raise OSError("taken")

    monkeypatch.setattr(mf.os, "rename", rename)
    with pytest.raises(ManifestError, match="^could not find a free version number for m$"):
        mf.publish(tmp_path / "store", base(), {"generator.onnx": _src(tmp_path)})
    assert len(tries) == 100 and os.listdir(tmp_path / "store" / "m") == []  # the temporary folder is gone


def test_what_is_written(tmp_path):
    m = base()
    del m["format"]
    folder = mf.publish(tmp_path / "store", m, {"generator.onnx": _src(tmp_path)})
    text = (folder / "manifest.json").read_text()
    written = json.loads(text)
    assert written["format"] == 1 and list(written) == [*list(m), "format"]  # in the publisher's order, not sorted
    assert text.startswith('{\n  "name": "m",\n')


def test_a_failure_after_the_rename_is_reported_as_itself(tmp_path, monkeypatch):
    def chmod(path, mode):
        raise PermissionError("no chmod here")

    monkeypatch.setattr(mf.os, "chmod", chmod)
    with pytest.raises(PermissionError, match="no chmod here"):
        mf.publish(tmp_path / "store", base(), {"generator.onnx": _src(tmp_path)})


def test_every_graph_files_external_data_is_checked(tmp_path, monkeypatch):
    d = tmp_path / "m" / "1"
    d.mkdir(parents=True)
    files = {}
    for name in ("generator.onnx", "encoder.onnx", "critic.onnx"):
        (d / name).write_bytes(name.encode())
        files[name] = mf.sha256_file(d / name)
    m = base(files=files)
    for role in ("encoder", "critic"):
        m["graphs"][role] = {"file": f"{role}.onnx", "inputs": [SPEC], "outputs": [SPEC]}
    read = []

    def unreadable(path):
        read.append(path.name)
        raise ValueError("not onnx")

    monkeypatch.setattr(mf, "external_files", unreadable)
    mf.verify_files(d, m)
    assert sorted(read) == ["critic.onnx", "encoder.onnx", "generator.onnx"]  # one unreadable graph skips only itself
    long = "w" * 100
    monkeypatch.setattr(mf, "external_files", lambda path: [long])
    with pytest.raises(ManifestError) as err:
        mf.verify_files(d, m)
    assert f"external data {'w' * 80!r} is not a file listed" in str(err.value)


def test_a_fixed_version_number_is_used_as_given(tmp_path):
    assert mf.publish(tmp_path / "store", base(files={"generator.onnx": SHA}), {"generator.onnx": _src(tmp_path)},
                      version=4) == tmp_path / "store" / "m" / "4"
