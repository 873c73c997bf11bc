"""What a new user of `python -m training.run` meets: --help lists every configuration key with its type and
default, the module's own examples parse, store paths in configs are the project's wherever the command runs,
and the evaluator refuses inputs outside the range its manifest declares."""

from __future__ import annotations

import dataclasses
import importlib
import re
import shlex

import numpy as np
import pytest

from ganserve.store import manifest as mf
from tests.conftest import publish_gan
from training import quantize as training_quantize
from training import run as training_run
from training.config import PROJECT, project_path
from training.evaluate import find_evaluator


def test_help_lists_every_key_with_type_and_default(capsys):
    pytest.importorskip("torch")
    with pytest.raises(SystemExit) as done:
        training_run.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    families = {f: getattr(importlib.import_module(m), "Config", None) for f, m in training_run.FAMILIES.items()}
    assert sum(c is not None for c in families.values()) >= 3
    for family, cls in families.items():
        if cls is None:
            continue
        assert f"family {family} (" in text
        for f in dataclasses.fields(cls):
            assert f"    --{f.name}={f.default!r}  ({f.type})" in text, (family, f.name)
    assert "gan-mnist, gan-r1-ring8" in text.split("\n  family ")[0]  # the config names


def test_the_modules_own_examples_are_accepted():
    pytest.importorskip("torch")
    examples = re.findall(r"^    python -m training\.run (.+?)(?:\s+#.*)?$", training_run.__doc__, re.M)
    assert len(examples) >= 4
    for line in examples:
        words = shlex.split(line)
        overrides = [w for w in words[1:] if w.startswith("--") and "=" in w]
        training_run.load(words[0], overrides)  # raises ConfigError for an unknown key (was: --epochs=2)


def test_store_paths_are_the_projects_wherever_the_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert project_path("model_store") == PROJECT / "model_store" and project_path(tmp_path) == tmp_path
    if not (PROJECT / "model_store" / "mnist-evaluator").is_dir():
        pytest.skip("no mnist-evaluator in model_store/")
    ev = find_evaluator("model_store", required=False)  # the config default, from another folder
    assert ev is not None and ev.dir.is_relative_to(PROJECT / "model_store")
    assert training_run.run.__defaults__[1] == PROJECT / "model_store"


def test_evaluator_refuses_inputs_outside_its_manifest_range():
    """Fed [-1, 1] the MNIST evaluator agrees with the labels 29% of the time and says nothing: the code that
    feeds it checks the range its manifest declares (absent: [0, 1])."""
    ev = find_evaluator(PROJECT / "model_store", required=False)
    if ev is None:
        pytest.skip("no mnist-evaluator in model_store/")
    x = np.random.default_rng(0).uniform(-1, 1, (4, 1, 28, 28)).astype(np.float32)
    with pytest.raises(ValueError, match=r"takes inputs in \[0, 1\] .* \(from \[-1, 1\]: \(x \+ 1\) / 2\)"):
        ev(x)
    logits, feats = ev((x + 1) / 2)
    assert logits.shape == (4, 10) and len(feats) == 4
    assert mf.input_range({"input": {"value_range": [-1, 1]}}) == (-1.0, 1.0)
    assert mf.input_range({}) == (0.0, 1.0)


def test_manifest_input_range_is_validated_and_written_by_the_evaluator():
    m = mf.read_manifest(find_evaluator(PROJECT / "model_store").dir) if (
        PROJECT / "model_store" / "mnist-evaluator").is_dir() else pytest.skip("no mnist-evaluator")
    mf.validate(dict(m, input={"value_range": [0.0, 1.0]}))
    for bad in ({"value_range": [1, 0]}, {"value_range": [0]}, {}, [0, 1]):
        with pytest.raises(mf.ManifestError, match="input.value_range"):
            mf.validate(dict(m, input=bad))
    pytest.importorskip("torch")
    from training.evaluator import EvaluatorConfig, manifest_fields

    assert manifest_fields(EvaluatorConfig())["input"] == {"value_range": [0.0, 1.0]}


def test_quantize_refuses_a_docs_folder_without_its_summary_before_any_work(tmp_path, capsys):
    """`training.quantize ... --docs DIR` updates DIR/summary.json: a folder without one is a usage error at once
    (exit 2), not a traceback after the variant was quantized, evaluated and published."""
    store = tmp_path / "store"
    with pytest.raises(SystemExit) as stop:
        training_quantize.main(["gan-mnist", "--store", str(store), "--docs", str(tmp_path)])
    assert stop.value.code == 2
    assert f"--docs {tmp_path}: no summary.json there" in capsys.readouterr().err
    assert not store.exists()


def test_inversion_measure_only_names_the_graphs_a_version_lacks(tmp_path, capsys):
    """`training.inversion MODEL --measure-only` on a version with no encoder and no gradient graph is a usage
    error naming both and the fix (exit 2), not a traceback from inside the inversion runtime."""
    pytest.importorskip("torch")
    from training import inversion as training_inversion

    store = tmp_path / "store"
    publish_gan(store, tmp_path / "build", extras=False)
    with pytest.raises(SystemExit) as stop:
        training_inversion.main(["tiny-gan", "--store", str(store), "--measure-only"])
    assert stop.value.code == 2
    assert re.search(r"cannot be measured with ENCODER, OPTIMIZE, HYBRID: it has no encoder and no generator_grad "
                     r"\(train an encoder with `python -m training.inversion tiny-gan`, or choose --methods\)",
                     capsys.readouterr().err)
    assert training_inversion.missing_graphs({"graphs": {"encoder": {}}}, ("ENCODER",)) == []
    assert training_inversion.missing_graphs({"graphs": {"encoder": {}}}, ("OPTIMIZE", "HYBRID")) == ["generator_grad"]
    assert training_inversion.missing_graphs({"graphs": {}}, ("FAST",)) == [
        "method FAST (one of ENCODER, OPTIMIZE, HYBRID)"]
