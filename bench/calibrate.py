"""Calibration of the divergence estimators against known answers: bias and interval coverage per estimator.

    python -m bench.calibrate [--sizes 1000 10000] [--only METRIC ...] [--reps-scale 1] [--budget SECONDS]
                              [--merge] [--json docs/calibration.json] [--docs docs/divergence_evaluation.md]
    python -m bench.calibrate --render      # rewrite the docs table from the JSON only

For each problem (a metric on two distributions whose divergence is known in closed form) and each n, draws
seeded samples a per-cell number of times (`Problem.reps`: hundreds for the cheap cells, tens for the k-NN ones;
`--reps-scale` multiplies, `--budget` stops a cell after that many seconds once it has `--min-reps`) and
reports the mean estimate, its bias against the truth, the sd over repeats, the mean interval width and the
fraction of 95% intervals that hold the truth ("coverage"), with its exact binomial (Clopper-Pearson) 95%
interval. Intervals that only claim the estimator's expectation (w1_exact, w2_exact, sliced_w, plain frechet) are
scored against the mean of the repeats ("covers E"). The JSON is written after every cell; `--merge` keeps the
JSON's other rows (each row records the command that made it), so costly metrics can run separately from cheap
ones. Writes the markdown table between the calibration markers of the docs page at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import stats

from ganserve import metrics as M

START, END = "<!-- calibration:start -->", "<!-- calibration:end -->"
G2 = M.Gaussian(np.zeros(2), np.eye(2))


@dataclass(frozen=True)
class Problem:
    metric: str
    what: str
    truth: float
    draw: Callable[[np.random.Generator, int], tuple]  # (rng, n) -> (P, Q)
    reps: tuple = (400, 200)  # repeats at n < 10,000 and at n >= 10,000 (cost-driven: +-2 points at 400)
    claims: str = "truth"     # "truth" or "expectation": what the interval says it covers
    max_n: int = 10_000
    options: tuple = ()


def _normal_shift(mu: float, d: int = 1):
    return lambda g, n: (g.standard_normal((n, d)), g.standard_normal((n, d)) + np.eye(d)[0] * mu)


def _counts(p, q):
    return lambda g, n: (g.multinomial(n, p), g.multinomial(n, q))


P3, Q3 = np.array([0.5, 0.3, 0.2]), np.array([0.3, 0.3, 0.4])
U4 = np.full(4, 0.25)
_KL = float(np.sum(P3 * np.log(P3 / Q3)))
_M3 = (P3 + Q3) / 2
_JS = float(0.5 * np.sum(P3 * np.log(P3 / _M3)) + 0.5 * np.sum(Q3 * np.log(Q3 / _M3)))

PROBLEMS = [
    Problem("knn_kl_pq", "N(0,1) vs N(3,1)", 4.5, _normal_shift(3.0), reps=(40, 20), max_n=20_000),
    Problem("knn_kl_qp", "N(0,1) vs N(3,1)", 4.5, _normal_shift(3.0), reps=(40, 20), max_n=20_000),
    Problem("knn_kl_pq", "3-D N(0,I) vs N(1,I)", 0.5, _normal_shift(1.0, 3), reps=(40, 20), max_n=20_000),
    Problem("mc_kl_pq", "2-D N(0,I) (density) vs samples of N((2,0),I)", 2.0,
            lambda g, n: (G2, g.standard_normal((n, 2)) + [2.0, 0.0]), reps=(40, 20), max_n=20_000),
    Problem("mc_kl_qp", "2-D N(0,I) (density) vs samples of N((2,0),I)", 2.0,
            lambda g, n: (G2, g.standard_normal((n, 2)) + [2.0, 0.0]), reps=(400, 200), max_n=20_000),
    Problem("kl_pq", "counts of [.5,.3,.2] vs [.3,.3,.4]", _KL, _counts(P3, Q3), reps=(1000, 1000), max_n=50_000),
    Problem("js", "counts of [.5,.3,.2] vs [.3,.3,.4]", _JS, _counts(P3, Q3), reps=(1000, 1000), max_n=50_000),
    Problem("tv", "counts of [.5,.3,.2] vs [.3,.3,.4]", 0.2, _counts(P3, Q3), reps=(1000, 1000), max_n=50_000),
    Problem("kl_pq", "counts of [.25]*4, P = Q", 0.0, _counts(U4, U4), reps=(1000, 1000), max_n=50_000),
    Problem("js", "counts of [.25]*4, P = Q", 0.0, _counts(U4, U4), reps=(1000, 1000), max_n=50_000),
    Problem("tv", "counts of [.25]*4, P = Q", 0.0, _counts(U4, U4), reps=(1000, 1000), max_n=50_000),
    Problem("w1_1d", "N(0,1) vs N(1,1)", 1.0, _normal_shift(1.0), reps=(400, 100), max_n=50_000),
    Problem("w1_exact", "2-D N(0,I) vs N((1,0),I)", 1.0, _normal_shift(1.0, 2), reps=(100, 60),
            claims="expectation"),
    Problem("w2_exact", "2-D N(0,I) vs N((1,0),I)", 1.0, _normal_shift(1.0, 2), reps=(100, 60),
            claims="expectation"),
    Problem("sliced_w", "2-D N(0,I) vs N((1,0),I)", 2 / math.pi, _normal_shift(1.0, 2), reps=(200, 60),
            claims="expectation", max_n=50_000),
    Problem("frechet", "8-D N(0,I) vs N(0.3,I)", 8 * 0.09,
            lambda g, n: (g.standard_normal((n, 8)), g.standard_normal((n, 8)) + 0.3), reps=(1000, 1000),
            max_n=50_000, claims="expectation"),
    Problem("frechet", "8-D N(0,I) vs N(0.3,I), Frechet-infinity", 8 * 0.09,
            lambda g, n: (g.standard_normal((n, 8)), g.standard_normal((n, 8)) + 0.3), reps=(200, 100),
            max_n=50_000, options=(("extrapolate", True),)),
    Problem("kid", "8-D N(0,I) vs N(0,I)", 0.0,
            lambda g, n: (g.standard_normal((n, 8)), g.standard_normal((n, 8))), reps=(40, 40), max_n=50_000),
    Problem("density", "8-D N(0,I) vs N(0,I)", 1.0,
            lambda g, n: (g.standard_normal((n, 8)), g.standard_normal((n, 8))), reps=(100, 20), max_n=10_000),
]


def label(pr: Problem) -> str:
    return pr.metric + (" (" + ", ".join(f"{k}={x}" for k, x in pr.options) + ")" if pr.options else "")


def binomial_ci(hits: int, reps: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a coverage rate from `hits` of `reps` repeats."""
    a = (1.0 - level) / 2.0
    lo = 0.0 if hits == 0 else float(stats.beta.ppf(a, hits, reps - hits + 1))
    hi = 1.0 if hits == reps else float(stats.beta.ppf(1.0 - a, hits + 1, reps - hits))
    return lo, hi


def run_cell(pr: Problem, n: int, reps: int, budget: float = math.inf, min_reps: int = 20) -> dict:
    """Up to `reps` seeded repeats (repeat r draws from SeedSequence([n, r]) and estimates with seed r), fewer
    when `budget` seconds run out after `min_reps`."""
    values, hits, widths, intervals, seconds, note = [], 0, [], [], [], ""
    start = time.perf_counter()
    for r in range(reps):
        if r >= min_reps and time.perf_counter() - start > budget:
            break
        p, q = pr.draw(np.random.default_rng([n, r]), n)
        t0 = time.perf_counter()
        e = M.estimate(pr.metric, p, q, seed=r, bootstrap=100, **dict(pr.options))
        seconds.append(time.perf_counter() - t0)
        values.append(e.value)
        intervals.append((e.ci_low, e.ci_high))
        hits += e.ci_low <= pr.truth <= e.ci_high
        widths.append(e.ci_high - e.ci_low)
        note = e.note
    done = len(values)
    v = np.array(values)
    centre = float(v.mean())
    hits_e = int(sum(lo <= centre <= hi for lo, hi in intervals))
    return {"metric": label(pr), "problem": pr.what, "n": n, "reps": done, "truth": pr.truth, "mean": centre,
            "bias": centre - pr.truth, "sd": float(v.std(ddof=1)) if done > 1 else 0.0,
            "width": float(np.mean(widths)), "coverage": hits / done, "coverage_ci": binomial_ci(hits, done),
            "coverage_of_mean": hits_e / done, "coverage_of_mean_ci": binomial_ci(hits_e, done),
            "claims": pr.claims, "seconds_per_estimate": float(np.median(seconds)), "note": note}


def _rate(p: float, ci, claimed: bool) -> str:
    flag = " **below 90%**" if claimed and ci[1] < 0.90 else ""
    return f"{100 * p:.1f}% [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]{flag}"


def table(rows: list[dict]) -> str:
    out = ["| metric | problem | truth | n | repeats | mean (bias) | sd | mean width | covers truth [95% CI] | "
           "covers E [95% CI] | interval claims | s/estimate |", "|" + " --- |" * 12]
    for r in rows:
        out.append(f"| `{r['metric']}` | {r['problem']} | {r['truth']:.4g} | {r['n']:,} | {r['reps']} | "
                   f"{r['mean']:.4g} ({r['bias']:+.3g}) | {r['sd']:.3g} | {r['width']:.3g} | "
                   f"{_rate(r['coverage'], r['coverage_ci'], r['claims'] == 'truth')} | "
                   f"{_rate(r['coverage_of_mean'], r['coverage_of_mean_ci'], r['claims'] == 'expectation')} | "
                   f"{r['claims']} | {r['seconds_per_estimate']:.2g} |")
    return "\n".join(out)


def sources(rows: list[dict]) -> str:
    """One line per command behind the rows, with its date and how many cells it made."""
    seen: dict[tuple, int] = {}
    for r in rows:
        key = (r.get("command", "?"), r.get("date", "?"))
        seen[key] = seen.get(key, 0) + 1
    return "\n".join(f"- `{cmd}` ({date}, {k} cell{'s' * (k > 1)})" for (cmd, date), k in seen.items())


def write_docs(path: Path, rows: list[dict]) -> None:
    text = (table(rows) + "\n\nCoverage intervals are exact binomial (Clopper-Pearson) 95% intervals over the repeats; "
            "**below 90%** marks a claimed coverage whose whole interval is under 90%. The rows come from:\n\n"
            + sources(rows))
    page = path.read_text()
    if START in page and END in page:
        head, rest = page.split(START, 1)
        page = head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1]
    else:
        page = page.rstrip("\n") + "\n\n" + START + "\n" + text + "\n" + END + "\n"
    path.write_text(page)


def _order(row: dict) -> tuple:
    keys = [(label(pr), pr.what) for pr in PROBLEMS]
    k = (row["metric"], row["problem"])
    return (keys.index(k) if k in keys else len(keys), row["n"])


def save(path: Path, rows: list[dict], extra: dict) -> None:
    rows.sort(key=_order)
    path.write_text(json.dumps({**extra, "rows": rows}, indent=1) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--only", nargs="*", default=None, help="metric names (or labels, e.g. 'frechet (extrapolate=True)')")
    ap.add_argument("--reps", type=int, default=None, help="repeats for every cell (default: each problem's own)")
    ap.add_argument("--reps-scale", type=float, default=1.0, help="multiply each problem's repeats")
    ap.add_argument("--budget", type=float, default=math.inf, help="seconds per cell before it stops early")
    ap.add_argument("--min-reps", type=int, default=20, help="repeats a cell makes whatever the budget")
    ap.add_argument("--merge", action="store_true", help="keep the JSON's rows for the cells not run")
    ap.add_argument("--render", action="store_true", help="only rewrite the docs table from the JSON")
    ap.add_argument("--json", type=Path, default=Path("docs/calibration.json"))
    ap.add_argument("--docs", type=Path, default=Path("docs/divergence_evaluation.md"))
    a = ap.parse_args(argv)
    old = json.loads(a.json.read_text()) if (a.merge or a.render) and a.json.exists() else {"rows": []}
    extra = {k: v for k, v in old.items() if k not in ("rows", "command")}  # commands are per row now
    rows = [r for r in old["rows"] if "coverage_ci" in r]  # rows from before the binomial intervals are dropped
    command = "python -m bench.calibrate " + shlex.join(argv if argv is not None else sys.argv[1:])
    for pr in [] if a.render else PROBLEMS:
        if a.only and pr.metric not in a.only and label(pr) not in a.only:
            continue
        for n in a.sizes:
            if n > pr.max_n:
                continue
            reps = a.reps or max(1, round(pr.reps[n >= 10_000] * a.reps_scale))
            row = run_cell(pr, n, reps, a.budget, min(a.min_reps, reps))
            row.update(command=command.strip(), date=datetime.date.today().isoformat())
            rows = [r for r in rows if (r["metric"], r["problem"], r["n"]) != (row["metric"], row["problem"], n)]
            rows.append(row)
            save(a.json, rows, extra)
            print(table([row]).split("\n")[-1], flush=True)
    rows.sort(key=_order)
    print(table(rows))
    if str(a.docs) not in ("", "."):  # --docs "" leaves the docs alone
        write_docs(a.docs, rows)


if __name__ == "__main__":
    main()
