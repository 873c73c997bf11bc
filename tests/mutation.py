"""Mutation testing of the modules that carry the contract, with mutmut 3: `make mutation` (every module below) or
`python -m tests.mutation latents batcher` (some), `--sample K` to test K mutants per module (seeded) instead
of all; the score and every surviving mutant go to docs/mutation.md (generated: edit EQUIVALENT here, not the page).

Why mutmut: it runs pytest itself, mutates one function at a time behind a trampoline, so each mutant runs
only the tests that called that function (collected once per module), forks workers from a warmed-up
process (`forkserver`: grpc is not fork-safe after use), and is scoped per file (`only_mutate`) with a fast
test subset per module. Each module runs in its own folder build/mutation/<name>/ (links to the packages and
a generated pyproject.toml), so modules never share a mutants/ cache and can run one after another.
Log lines are not mutated (`do_not_mutate_patterns`): their text is for people, not a contract.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutation"
PAGE = ROOT / "docs" / "mutation.md"
PACKAGES = ("protos", "ganserve", "server", "sdk", "training", "tests")
MUTMUT = [sys.executable, "-m", "mutmut"]


@dataclass(frozen=True)
class Module:
    path: str          # the file mutated
    tests: tuple       # pytest arguments selecting its fast test subset
    why: str           # what the module carries


MODULES = {
    "latents": Module("protos/latents.py", ("tests/test_latents.py",), "seed -> latents, interpolation paths"),
    "batcher": Module("server/batcher.py", ("tests/test_batcher.py", "tests/test_batcher_rules.py",
                                            "tests/test_server_reliability.py", "-k", "batcher or result_is or idle"),
                      "dynamic batcher"),
    "errors": Module("sdk/_errors.py", ("tests/test_sdk_errors.py",
                                        "tests/test_sdk.py::test_status_to_exception_table_is_complete_and_exact",
                                        "tests/test_sdk.py::test_retryable_set_is_exactly_unavailable_and_resource_exhausted"),
                     "status -> exception table, retryable set"),
    "types": Module("sdk/_types.py", ("tests/test_sdk_requests.py",
                                      "tests/test_sdk.py::test_bad_arguments_are_refused_before_sending_with_the_field"),
                    "SDK requests and results"),
    "validate": Module("server/validate.py", ("tests/test_validate.py",), "request validation"),
    "engine": Module("server/engine.py", ("tests/test_engine.py", "tests/test_engine_edges.py"),
                     "sample, stream, interpolate, invert"),
    "manifest": Module("ganserve/store/manifest.py", ("tests/test_manifest.py", "tests/test_manifest_publish.py"),
                       "manifest schema, sha256, atomic publish"),
    "metrics-histogram": Module("ganserve/metrics/histogram.py", ("tests/test_metrics_units.py",
                                                                  "tests/test_metrics_tv.py"),
                                "class-level estimators (KL, JS, TV)"),
    "metrics-wasserstein": Module("ganserve/metrics/wasserstein.py", ("tests/test_metrics_w1.py",),
                                  "W1 exact and sliced, with intervals"),
    "metrics-intervals": Module("ganserve/metrics/intervals.py", ("tests/test_metrics_units.py",),
                                "bootstrap intervals"),
}

# Surviving mutants that cannot be killed because they do not change behaviour: mutant name -> why.
EQUIVALENT = {
    **{f"protos.latents.x__block__mutmut_{i}": "the whole block is drawn without truncation too; numpy fills an "
                                              "array in order, so its first rows equal a (rows, d) draw (slower only)"
       for i in (11, 12)},
    **{f"protos.latents.x__block__mutmut_{i}": "`|z| >= t` vs `> t` differ only when a float32 normal draw equals t"
       for i in (18, 27)},
    **{f"protos.latents.x_latents__mutmut_{i}": "the block draws more rows than it uses; numpy fills in order, so "
                                               "the rows used are the same (slower only)" for i in (40, 81, 82)},
    "protos.latents.x_latents__mutmut_53": "n = 0 then draws one block it does not use; the reply is still (0, d)",
    **{f"protos.latents.x_lerp__mutmut_{i}": "one operand's float64 cast dropped: the others are float64, so numpy "
                                             "promotes the arithmetic to float64 all the same" for i in (3, 5, 7, 9, 13, 15)},
    **{f"protos.latents.x_slerp__mutmut_{i}": "t's float64 cast dropped: a and b are float64, so the arithmetic "
                                              "is float64 all the same" for i in (16, 18)},
    **{f"protos.latents.x_{f}__mutmut_{i}": "reshape(-2, ...): numpy reads any negative size as 'the rest'"
       for f, i in (("lerp", 18), ("slerp", 20))},
    **{f"protos.latents.x_slerp__mutmut_{i}": "`<= 1e-6` vs `< 1e-6`: differ only when the angle is exactly 1e-6"
       for i in (51, 54)},
    **{f"protos.latents.x_path__mutmut_{i}": "points' float32 cast dropped: lerp/slerp compute in float64 and the "
                                            "path is cast to float32 at the end" for i in (5, 7)},
}

_B = "server.batcher.xǁBatcherǁ"
EQUIVALENT.update({
    **{f"{_B}{f}__mutmut_{i}": "None for False: the flag is only ever read as a truth value"
       for f, i in (("__init__", 12), ("__init__", 38), ("__init__", 41), ("submit", 37), ("_loop", 20),
                    ("run_batch", 2))},
    f"{_B}__init____mutmut_22": "ThreadPoolExecutor(None): a larger pool; a split submits runners - 1 parts all the same",
    f"{_B}__init____mutmut_24": "a helper pool of the default size: a split submits runners - 1 parts all the same",
    f"{_B}__init____mutmut_26": "a pool of runners + 1 threads: a split submits runners - 1 parts all the same",
    f"{_B}__init____mutmut_34": "the default observer's return value is never read",
    "server.batcher.xǁ_Itemǁ__init____mutmut_1": "bulk's default: the one caller (submit) always passes bulk",
    "server.batcher.x_coalesce__mutmut_17": "every request of a batch has the same inputs: parts[1]'s keys are parts[0]'s",
    f"{_B}_take__mutmut_10": "`max_delay_s >= 0`: with no delay the wait loop breaks at once (left <= 0)",
    f"{_B}_take__mutmut_22": "`left < 0` vs `left <= 0`: differ only when the real clock lands exactly on the deadline",
    f"{_B}_run_sliced__mutmut_6": "`total < max_batch`: a batch of exactly max_batch rows runs as one slice anyway",
})

_V = "server.validate.x_"
EQUIVALENT.update({
    f"{_V}images__mutmut_85": "UINT8 decoded in float64 instead of float32 before the float32 cast: the same value "
                              "within 1 float32 ulp (the float64 path is the more exact one), below any tolerance",
    f"{_V}labels__mutmut_162": "`< 1e-3` vs `<= 1e-3`: |sum - 1| equals fl(1e-3) for no double sum (1 +- fl(1e-3) "
                               "is not a double)",
    **{f"{_V}labels__mutmut_{i}": "y is float32 already on both paths (one_hot and float_tensor)" for i in (173, 175)},
    f"{_V}labels__mutmut_189": "`n >= 1`: repeating one row once gives the same row",
    **{f"{_V}labels__mutmut_{i}": "the hard labels are integers either way (proto int32), and one_hot casts them "
                                  "to int64 itself" for i in (50, 52)},
    **{f"{_V}labels__mutmut_{i}": "the message's fallback index when no label is bad: built, never raised"
       for i in (69, 75)},
})

EQUIVALENT.update({
    "sdk._errors.x__rpc_messages__mutmut_21": "`len(rest) >= 1`: no field gives a type name without a label (rest "
                                              "has 0 or 2 entries), so the same label is read",
    "sdk._errors.x__rpc_messages__mutmut_25": "`rest[1]`: every field with a type name also has a label (truthy), "
                                              "so the same branch runs",
})

_T = "sdk._types.x_"
EQUIVALENT.update({
    **{f"{_T}{f}__mutmut_{i}": "astype(None) is float64, and tensors.from_array sends every float array as FLOAT32"
       for f, i in (("_endpoint", 34), ("invert_request", 15))},
    **{f"{_T}{f}__mutmut_{i}": "np.array of a repeated float proto field is float32 already (the dtype is redundant)"
       for f, i in (("interpolation", 18), ("interpolation", 20), ("inversion", 19), ("inversion", 21))},
})

_E = "server.engine.x_"
EQUIVALENT.update({
    f"{_E}classify__mutmut_1": "257 images per classifier run instead of 256: the same logits (rows are independent)",
    f"{_E}invert__mutmut_13": "the step count's start value: the first slice overwrites it (validation allows no "
                              "empty inversion)",
    f"{_E}make_runner__mutmut_15": "session.run(None) returns every output: a generator graph has one (x)",
})

_M = "ganserve.store.manifest.x_"
EQUIVALENT.update({
    **{f"{_M}_check_latent_code__mutmut_{i}": "float() reads 'INF' as 'inf'" for i in (59, 62)},
    **{f"{_M}publish__mutmut_{i}": "sort_keys=None and the default are both False" for i in (62, 65)},
    **{f"{_M}sha256_file__mutmut_{i}": "the read size only bounds memory: the same bytes reach the digest"
       for i in (13, 15, 16)},
    **{f"{_M}validate__mutmut_{i}": "'.' and '..' start with '.', which the same rule refuses anyway"
       for i in (352, 353)},
})

_H, _I, _W = "ganserve.metrics.histogram.x_", "ganserve.metrics.intervals.x_", "ganserve.metrics.wasserstein.x_"
EQUIVALENT.update({
    f"{_H}conditional_accuracy__mutmut_21": "boolean hits average and weigh in np.bincount exactly as 0/1 floats",
    f"{_H}tv_ci__mutmut_13": "np.zeros_like(None) is a 0-d zero: np.where reads it as False in every bin, as the "
                             "all-False mask",
    f"{_H}tv_ci__mutmut_34": "sum(+1) on the (B, K) resamples is the same axis as sum(-1)",
    **{f"{_H}conditional_accuracy__mutmut_{i}": "the division is by max(n, 1): there is no warning to silence"
       for i in (35, 36, 37, 38)},
    **{f"{_I}boot_mean__mutmut_{i}": "the block size only bounds memory: the resampled indices come from one "
                                     "stream, so any blocking draws the same ones" for i in (9, 11, 12, 13, 18)},
    f"{_I}boot_mean__mutmut_37": "rng.integers(n, ...) is rng.integers(0, n, ...)",
    **{f"{_I}percentile_ci__mutmut_{i}": "float(r[i]) of an int or float32 replicate is the same double as after a "
                                         "float64 cast" for i in (4, 6)},
    **{f"{_I}half_sample_ci__mutmut_{i}": "replace=None is falsy: the same draw without replacement" for i in (7, 21)},
    f"{_I}extrapolated__mutmut_87": "lstsq's default rcond is None (machine precision) in NumPy >= 2",
    **{f"{_W}_null_bias__mutmut_{i}": "POT reads a missing weight vector as uniform, which w is" for i in (25, 26)},
    f"{_W}_null_bias__mutmut_40": "scipy's 'EUCLIDEAN' (cdist) instead of POT's own: the same distances to 1e-15",
    **{f"{_W}same_subsample__mutmut_{i}": "replace=None is falsy: the same draw without replacement" for i in (7, 21)},
})

# Surviving mutants that change behaviour no test can see without timing: listed on the page with the reason, and
# counted as survivors (not equivalent). The batcher's timing-only ones are gone: tests/test_batcher_rules.py's
# hand-moved clock kills them.
NOTED: dict[str, str] = {
    **{f"{_W}_null_bias__mutmut_{i}": "the simplex iteration cap (10^7) against POT's default of 10^5 or a higher "
                                      "one: differs only on halves whose transport needs over 10^5 iterations, far "
                                      "larger than a test can afford" for i in (32, 42, 43)},
}

# What a module's figures mean when they cannot be read at face value (shown under the table).
CAVEATS = {
    "minutes": "wall time of the full run on this project's 2-core machine under `nice -n 19` beside other work, "
               "plus any retest of survivors (`--survivors`); a rerun with unchanged code and tests reuses mutmut's "
               "results and takes seconds per module.",
}

STATUS = {"killed", "survived", "timeout", "no tests", "skipped", "suspicious", "segfault", "not checked",
          "check was interrupted by user", "caught by type check"}


def _pyproject(module: Module) -> str:
    """The work folder's pyproject.toml: this module's mutmut scope plus the repository's pytest settings."""
    source = (ROOT / "pyproject.toml").read_text()
    pytest_part = source[source.index("[tool.pytest.ini_options]"):]
    pytest_part = pytest_part[:pytest_part.index("\n[", 1)] if "\n[" in pytest_part[1:] else pytest_part
    pytest_part = pytest_part.replace('addopts = "-ra --strict-markers --durations=10"', 'addopts = "--strict-markers"')
    return (f"{pytest_part.rstrip()}\n\n[tool.mutmut]\n"
            f"source_paths = {json.dumps(list(PACKAGES[:-1]))}\n"
            f"only_mutate = {json.dumps([module.path])}\n"
            f"pytest_add_cli_args_test_selection = {json.dumps(list(module.tests))}\n"
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x", "--timeout=300"]\n'
            'process_isolation = "forkserver"\n'
            'do_not_mutate_patterns = ["^\\\\s*log\\\\.(debug|info|warning|error|exception)\\\\("]\n')


def _prepare(name: str, module: Module, fresh: bool) -> Path:
    work = WORK / name
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        link = work / package
        if link.is_symlink() and link.resolve() != ROOT / package:
            link.unlink()  # a work folder copied from another checkout: mutate this one
        if not link.is_symlink():
            link.symlink_to(ROOT / package)
    text = _pyproject(module)
    pyproject = work / "pyproject.toml"
    if not pyproject.exists() or pyproject.read_text() != text:
        pyproject.write_text(text)
    return work


def _results(work: Path) -> dict[str, str]:
    out = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=True)
    found = {}
    for line in out.stdout.splitlines():
        key, _, status = line.strip().rpartition(": ")
        if status in STATUS:
            found[key] = status
    return found


def _names(work: Path) -> list[str]:
    """Every mutant's name, from mutmut's own list (mutants/<file>.meta, written when it generates them)."""
    names = []
    for meta in (work / "mutants").rglob("*.meta"):
        names.extend(json.loads(meta.read_text())["exit_code_by_key"])
    return sorted(names)


_DIFFS = ("import json, sys\nfrom mutmut.mutation.diff_apply import get_diff_for_mutant\n"
          "print(json.dumps({n: get_diff_for_mutant(n) for n in json.loads(sys.stdin.read())}))")


def _diffs(work: Path, names: list[str]) -> dict[str, str]:
    """Each mutant's changed lines, from mutmut's own diff (one process for all, not `mutmut show` per mutant)."""
    out = subprocess.run([sys.executable, "-c", _DIFFS], cwd=work, input=json.dumps(names), capture_output=True,
                         text=True, check=True)
    return {n: "\n".join(line for line in d.splitlines() if line[:1] in "-+" and line[:3] not in ("---", "+++"))
            for n, d in json.loads(out.stdout).items()}


def run_module(name: str, module: Module, *, sample: int, seed: int, fresh: bool, log, only=()) -> dict:
    work = _prepare(name, module, fresh)
    t0 = time.monotonic()
    cmd = ["nice", "-n", "19", *MUTMUT, "run", "--max-children", str(min(os.cpu_count() or 2, 2))]
    if sample:
        # mutmut writes its list of mutants when it generates them: generate (a run of a name that does not
        # exist stops right after), then run a seeded sample of the names.
        subprocess.run([*cmd, "no-such-mutant"], cwd=work, stdout=log, stderr=log, check=False)
        names = _names(work)
        chosen = sorted(random.Random(seed).sample(names, min(sample, len(names))))
        cmd += chosen
    else:
        names = []
    subprocess.run([*cmd, *only], cwd=work, stdout=log, stderr=log, check=False)
    results = _results(work)
    if sample:
        results = {k: v for k, v in results.items() if k in set(chosen)}
    survivors = _diffs(work, [k for k, v in results.items() if v in ("survived", "no tests", "suspicious")])
    return {"module": name, "path": module.path, "why": module.why, "tests": shlex.join(module.tests),
            "sampled_from": len(names) if sample else 0,
            "seconds": round(time.monotonic() - t0), "results": results, "survivors": survivors}


def _score(report: dict) -> tuple[int, int, int, int]:
    results = report["results"]
    killed = sum(v in ("killed", "timeout", "segfault", "caught by type check") for v in results.values())
    equivalent = sum(k in EQUIVALENT for k in report["survivors"])
    checked = sum(v != "not checked" and v != "skipped" for v in results.values())
    return killed, equivalent, checked, len(report["survivors"]) - equivalent


def write_page(reports: list[dict]) -> str:
    lines = ["# Mutation testing", "",
             ("Generated by `make mutation` (`python -m tests.mutation [module ...]`, mutmut "
              f"{_mutmut_version()}); do not edit: an equivalent mutant is marked in tests/mutation.py's EQUIVALENT."),
             "",
             "A mutant is a small change to the code (an operator, a constant, a dropped argument); a test suite",
             "that lets one pass has a hole. mutmut 3 was chosen because it drives pytest itself, runs each mutant",
             "only against the tests that called the mutated function, forks its workers from a warmed-up process",
             "(`forkserver`: safe with grpc), and is scoped per file with a fast test subset per module (the table",
             "says which: unit tests that call the module directly, no server, so a module's mutants take",
             "minutes). Log lines are not mutated. Score = (killed + timed out) / (mutants checked - equivalent",
             "ones); a survivor is killed by a sharper test or listed below as equivalent with the reason.",
             "`make mutation ARGS=latents` reruns one module (mutmut keeps its results in",
             "build/mutation/<module>/ and retests only what changed); `--survivors` retests the last survivors",
             "after new tests, `--timeouts` the mutants a loaded machine timed out; `make mutation-sample` tests a",
             "seeded sample of 15 mutants per module in a few minutes. Not part of `make test` or CI.", "",
             "| module | file | carries | tests run | mutants | killed | equivalent | surviving | score | minutes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    done = {r["module"] for r in reports}
    total_killed = total_denominator = 0
    for r in reports:
        killed, equivalent, checked, surviving = _score(r)
        denominator = max(checked - equivalent, 1)
        total_killed, total_denominator = total_killed + killed, total_denominator + denominator
        count = f"{checked} (a sample of {r['sampled_from']})" if r.get("sampled_from") else f"{checked}"
        lines.append(f"| {r['module']} | `{r['path']}` | {r['why']} | `{r['tests']}` | {count} | {killed} | "
                     f"{equivalent} | {surviving} | {100 * killed / denominator:.1f}% | {r['seconds'] / 60:.1f} |")
    for name, m in MODULES.items():
        if name not in done:
            lines.append(f"| {name} | `{m.path}` | {m.why} | `{shlex.join(m.tests)}` | not run yet | | | | | |")
    lines += ["", (f"Overall: {100 * total_killed / max(total_denominator, 1):.1f}% "
                   f"({total_killed} of {total_denominator})."), ""]
    lines += [f"- {name}: {text}" for name, text in CAVEATS.items()] + [""]
    for r in reports:
        if not r["survivors"]:
            continue
        lines += [f"## {r['module']}: surviving mutants", ""]
        for name, diff in sorted(r["survivors"].items()):
            reason = EQUIVALENT.get(name)
            why = f" - equivalent: {reason}" if reason else (f" - not killed: {NOTED[name]}" if name in NOTED else "")
            lines += [f"- `{name}` ({r['results'][name]}){why}", "",
                      "  ```diff", *("  " + d for d in diff.splitlines()), "  ```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--sample", type=int, default=0, help="test this many mutants per module (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed")
    parser.add_argument("--fresh", action="store_true", help="forget mutmut's cached results first")
    parser.add_argument("--page", type=Path, default=PAGE, help="where to write the report")
    parser.add_argument("--page-only", action="store_true", help="only rewrite the page from the last results")
    parser.add_argument("--only", nargs="+", default=[], metavar="MUTANT",
                        help="retest only these mutants (names or fnmatch patterns) of the modules named")
    parser.add_argument("--survivors", action="store_true",
                        help="retest only the mutants the module's last report lists as surviving (after new tests)")
    parser.add_argument("--timeouts", action="store_true",
                        help="retest only the mutants the last report lists as timed out (a loaded machine can time "
                             "out a mutant the tests would kill)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES and not fnmatch.filter(MODULES, m)]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    names = [n for n in MODULES if not args.modules or any(fnmatch.fnmatch(n, m) for m in args.modules)]
    WORK.mkdir(parents=True, exist_ok=True)
    suffix = ".sample.json" if args.sample else ".json"  # a sample never replaces a full run's figures
    for name in names if not args.page_only else []:
        print(f"{name}: mutating {MODULES[name].path} ...", flush=True)
        only, before = list(args.only), 0
        if (args.survivors or args.timeouts) and (WORK / f"{name}.json").exists():
            last = json.loads((WORK / f"{name}.json").read_text())
            only += sorted(last["survivors"]) if args.survivors else []
            only += sorted(k for k, v in last["results"].items() if v == "timeout") if args.timeouts else []
            before = last["seconds"]  # minutes: the full run plus retests
            if not only:
                continue
        with open(WORK / f"{name}.log", "w") as log:
            report = run_module(name, MODULES[name], sample=args.sample, seed=args.seed, fresh=args.fresh, log=log,
                                only=only)
        report["seconds"] += before
        killed, equivalent, checked, surviving = _score(report)
        print(f"{name}: {killed}/{checked - equivalent} killed, {surviving} surviving ({report['seconds']} s)",
              flush=True)
        (WORK / f"{name}{suffix}").write_text(json.dumps(report, indent=1))
    # one report file per module, so modules run in parallel processes never overwrite each other's figures
    reports = [json.loads((WORK / f"{n}{suffix}").read_text()) for n in MODULES if (WORK / f"{n}{suffix}").exists()]
    args.page.write_text(write_page(reports))
    print(f"wrote {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
