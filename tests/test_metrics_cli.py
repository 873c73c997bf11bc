"""`python -m sdk evaluate` (in-process, against a real server over the tiny store): --reference/--model, the
table, the notes for +inf and lower bounds, and what --plot draws for each kind of data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdk import Client
from sdk._cli import main
from sdk._plot import MIXTURES, _histograms, log_density
from ganserve import data


@pytest.fixture()
def cli(server, monkeypatch, capsys):
    monkeypatch.setenv("GANSERVE_TARGET", server.target)

    def run(*args) -> str:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    return run


def test_model_against_reference_table_and_lower_bound_note(cli):
    out = cli("evaluate", "--reference", "tiny-gan", "--model", "tiny-gan", "--metrics", "js", "js_critic",
              "--n", 200, "--bootstrap", 20)
    lines = out.splitlines()
    assert lines[:2] == ["P = model tiny-gan@1 (200)", "Q = model tiny-gan@1 (200)"]
    assert lines[4].split()[:3] == ["metric", "value", "95%"]
    js_critic = next(line for line in lines if line.startswith("js_critic "))
    assert "200/200" in js_critic and "lower bound; discriminator" in js_critic
    assert any(line.startswith("js_critic: variational lower bound") for line in lines)


def test_infinite_kl_is_printed_as_inf_with_its_reason(cli):
    # P: the conditional model over all classes; Q: the same model asked for class 0 only
    out = cli("evaluate", "--reference", "tiny-cgan", "--model", "tiny-cgan", "--labels", 0, "--metrics", "kl_pq",
              "js", "--n", 200, "--bootstrap", 20)
    row = next(line for line in out.splitlines() if line.startswith("kl_pq "))
    assert row.split()[1] == "inf", out
    assert any(line.startswith("kl_pq: +inf: Q has zero count in bin(s)") for line in out.splitlines()), out


def test_plot_class_histograms_side_by_side(cli, tmp_path):
    out = cli("evaluate", "--reference", "tiny-cgan", "--compare", "tiny-gan", "tiny-cgan", "--metrics", "frechet",
              "--n", 200, "--bootstrap", 10, "--plot", tmp_path / "h.png")
    assert out.rstrip().endswith(f"plot: {tmp_path / 'h.png'} (class histograms)"), out
    w, h = Image.open(tmp_path / "h.png").size
    assert w > 1.8 * h  # two panels side by side


def test_plot_mixture_samples_over_contours(cli, tmp_path):
    out = cli("evaluate", "--reference", "ring8", "--model", "tiny-points", "--n", 300, "--bootstrap", 10,
              "--plot", tmp_path / "m.png")
    assert "modes_covered" in out and out.rstrip().endswith("(samples over the density's contours)"), out
    assert Image.open(tmp_path / "m.png").size[0] > 300


def test_histograms_in_the_note_are_the_counts(server):
    with Client(server.target) as c:
        ev = c.evaluate(np.array([0, 0, 1, 2, 2, 2]), np.array([2, 2, 1, 1]), ["tv", "js"])
    hp, hq = _histograms(ev)
    np.testing.assert_array_equal(hp, [2, 1, 3])
    np.testing.assert_array_equal(hq, [0, 2, 2])
    assert ev["tv"].value == pytest.approx(0.5 * (2 / 6 + abs(1 / 6 - 0.5) + abs(0.5 - 0.5)))


def test_the_cli_mixture_constants_match_the_datasets():
    """sdk/_plot.py keeps its own (means, std) of the 2-D references (the SDK imports only protos): they must be
    the datasets' own, and so must the log-density drawn from them."""
    x = np.random.default_rng(0).normal(size=(50, 2)) * 2
    for name, definition in MIXTURES.items():
        means, std = definition()
        ref = data.MIXTURES[name]()
        np.testing.assert_array_equal(means, ref.means)
        assert std == ref.std
        np.testing.assert_allclose(log_density(x, means, std), ref.log_density(x), rtol=1e-12)
