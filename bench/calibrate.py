"""Calibration of the divergence estimators against known answers: bias and interval coverage per estimator.

    python -m bench.calibrate [--reps 20] [--reps-large 8] [--sizes 1000 10000] [--json docs/calibration.json]
                              [--docs docs/divergence_evaluation.md]

For each problem (a metric on two distributions whose divergence is known in closed form) and each n, draws
seeded samples `reps` times and reports the mean estimate, its bias against the truth, the sd over repeats,
the mean interval width and the fraction of 95% intervals that hold the truth ("coverage"). Intervals that
only claim the estimator's expectation (w1_exact, w2_exact, sliced_w) are also scored against the mean of the
repeats ("coverage of E"). Writes the JSON and the markdown table between the calibration markers of the docs
page. Prints one line per cell as it goes (the k-NN metrics at n = 10,000 take ~10-20 s per estimate here).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ganserve import metrics as M

START, END = "<!-- calibration:start -->", "<!-- calibration:end -->"
G2 = M.Gaussian(np.zeros(2), np.eye(2))


@dataclass(frozen=True)
class Problem:
    metric: str
    what: str
    truth: float
    draw: Callable[[np.random.Generator, int], tuple]  # (rng, n) -> (P, Q)
    costly: bool = False      # fewer repeats at large n
    claims: str = "truth"     # "truth" or "expectation": what the interval says it covers
    max_n: int = 10_000
    options: tuple = ()


def _normal_shift(mu: float, d: int = 1):
    return lambda g, n: (g.standard_normal((n, d)), g.standard_normal((n, d)) + np.eye(d)[0] * mu)


def _counts(p, q):
    return lambda g, n: (g.multinomial(n, p), g.multinomial(n, q))


P3, Q3 = np.array([0.5, 0.3, 0.2]), np.array([0.3, 0.3, 0.4])
_KL = float(np.sum(P3 * np.log(P3 / Q3)))
_M3 = (P3 + Q3) / 2
_JS = float(0.5 * np.sum(P3 * np.log(P3 / _M3)) + 0.5 * np.sum(Q3 * np.log(Q3 / _M3)))

PROBLEMS = [
    Problem("knn_kl_pq", "N(0,1) vs N(3,1)", 4.5, _normal_shift(3.0), costly=True, max_n=20_000),
    Problem("knn_kl_qp", "N(0,1) vs N(3,1)", 4.5, _normal_shift(3.0), costly=True, max_n=20_000),
    Problem("knn_kl_pq", "3-D N(0,I) vs N(1,I)", 0.5, _normal_shift(1.0, 3), costly=True, max_n=20_000),
    Problem("mc_kl_pq", "2-D N(0,I) (density) vs samples of N((2,0),I)", 2.0,
            lambda g, n: (G2, g.standard_normal((n, 2)) + [2.0, 0.0]), costly=True, max_n=20_000),
    Problem("mc_kl_qp", "2-D N(0,I) (density) vs samples of N((2,0),I)", 2.0,
            lambda g, n: (G2, g.standard_normal((n, 2)) + [2.0, 0.0]), costly=True, max_n=20_000),
    Problem("kl_pq", "counts of [.5,.3,.2] vs [.3,.3,.4]", _KL, _counts(P3, Q3), max_n=50_000),
    Problem("js", "counts of [.5,.3,.2] vs [.3,.3,.4]", _JS, _counts(P3, Q3), max_n=50_000),
    Problem("tv", "counts of [.5,.3,.2] vs [.3,.3,.4]", 0.2, _counts(P3, Q3), max_n=50_000),
    Problem("w1_1d", "N(0,1) vs N(1,1)", 1.0, _normal_shift(1.0), max_n=50_000),
    Problem("w1_exact", "2-D N(0,I) vs N((1,0),I)", 1.0, _normal_shift(1.0, 2), claims="expectation"),
    Problem("w2_exact", "2-D N(0,I) vs N((1,0),I)", 1.0, _normal_shift(1.0, 2), claims="expectation"),
    Problem("sliced_w", "2-D N(0,I) vs N((1,0),I)", 2 / math.pi, _normal_shift(1.0, 2), claims="expectation",
            max_n=50_000),
    Problem("frechet", "8-D N(0,I) vs N(0.3,I)", 8 * 0.09,
            lambda g, n: (g.standard_normal((n, 8)), g.standard_normal((n, 8)) + 0.3), max_n=50_000,
            claims="expectation"),
    Problem("frechet", "8-D N(0,I) vs N(0.3,I), Frechet-infinity", 8 * 0.09,
            lambda g, n: (g.standard_normal((n, 8)), g.standard_normal((n, 8)) + 0.3), max_n=50_000,
            options=(("extrapolate", True),)),
    Problem("kid", "8-D N(0,I) vs N(0,I)", 0.0,
            lambda g, n: (g.standard_normal((n, 8)), g.standard_normal((n, 8))), max_n=50_000),
    Problem("density", "8-D N(0,I) vs N(0,I)", 1.0,
            lambda g, n: (g.standard_normal((n, 8)), g.standard_normal((n, 8))), costly=True, max_n=10_000),
]


def run_cell(pr: Problem, n: int, reps: int) -> dict:
    values, hits, widths, intervals, seconds = [], 0, [], [], []
    for r in range(reps):
        g = np.random.default_rng(10_000 * r + n)
        p, q = pr.draw(g, n)
        t0 = time.perf_counter()
        e = M.estimate(pr.metric, p, q, seed=r, bootstrap=100, **dict(pr.options))
        seconds.append(time.perf_counter() - t0)
        values.append(e.value)
        intervals.append((e.ci_low, e.ci_high))
        hits += e.ci_low <= pr.truth <= e.ci_high
        widths.append(e.ci_high - e.ci_low)
    v = np.array(values)
    centre = float(v.mean())
    cover_e = float(np.mean([lo <= centre <= hi for lo, hi in intervals]))
    return {"metric": pr.metric + (" (" + ", ".join(f"{k}={x}" for k, x in pr.options) + ")" if pr.options else ""),
            "problem": pr.what, "n": n, "reps": reps, "truth": pr.truth, "mean": centre, "bias": centre - pr.truth,
            "sd": float(v.std(ddof=1)) if reps > 1 else 0.0, "width": float(np.mean(widths)),
            "coverage": hits / reps, "coverage_of_mean": cover_e, "claims": pr.claims,
            "seconds_per_estimate": float(np.median(seconds))}


def table(rows: list[dict]) -> str:
    out = ["| metric | problem | truth | n | repeats | mean (bias) | sd | mean width | covers truth | covers E | "
           "interval claims | s/estimate |", "|" + " --- |" * 12]
    for r in rows:
        out.append(f"| `{r['metric']}` | {r['problem']} | {r['truth']:.4g} | {r['n']:,} | {r['reps']} | "
                   f"{r['mean']:.4g} ({r['bias']:+.3g}) | {r['sd']:.3g} | {r['width']:.3g} | "
                   f"{100 * r['coverage']:.0f}% | {100 * r['coverage_of_mean']:.0f}% | {r['claims']} | "
                   f"{r['seconds_per_estimate']:.2g} |")
    return "\n".join(out)


def write_docs(path: Path, text: str) -> None:
    page = path.read_text()
    if START in page and END in page:
        head, rest = page.split(START, 1)
        page = head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1]
    else:
        page = page.rstrip("\n") + "\n\n" + START + "\n" + text + "\n" + END + "\n"
    path.write_text(page)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--reps", type=int, default=20, help="repeats per cell")
    ap.add_argument("--reps-large", type=int, default=8, help="repeats of costly metrics at n >= 10,000")
    ap.add_argument("--only", nargs="*", default=None, help="metric names to run")
    ap.add_argument("--json", type=Path, default=Path("docs/calibration.json"))
    ap.add_argument("--docs", type=Path, default=Path("docs/divergence_evaluation.md"))
    a = ap.parse_args(argv)
    rows = []
    for pr in PROBLEMS:
        if a.only and pr.metric not in a.only:
            continue
        for n in a.sizes:
            if n > pr.max_n:
                continue
            reps = a.reps_large if pr.costly and n >= 10_000 else a.reps
            row = run_cell(pr, n, reps)
            rows.append(row)
            print(table([row]).split("\n")[-1], flush=True)
    a.json.write_text(json.dumps({"command": "python -m bench.calibrate " + " ".join(argv or []), "rows": rows},
                                 indent=1) + "\n")
    text = table(rows)
    print(text)
    if str(a.docs) not in ("", "."):  # --docs "" leaves the docs alone
        write_docs(a.docs, text)


if __name__ == "__main__":
    main()
