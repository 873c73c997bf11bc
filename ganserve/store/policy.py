"""Which versions of a model are served and which one "name" means: the version policy and the quality gate.

The rule, one place (the registry, the store CLI and the docs all use `decide`):
1. versions that failed to load or check are UNAVAILABLE (the caller passes them with their reason);
2. the policy retires versions: `specific` serves only its listed versions, `rollback` retires the default
   (its number goes into `retired`); RETIRED versions are not callable;
3. walking the rest in ascending order, a version is accepted (READY) when it is the first one, was promoted,
   or its judged figures are not worse than the last accepted version's beyond TOLERANCES (the quality gate);
   otherwise, and whenever its publisher marked it a candidate (a smoke run), it is CANDIDATE: callable as
   name@version, never the default;
4. the default ("name" alone) is the pinned version under `pinned`, else the newest READY version.
Reduced-precision variants (manifest `precision` other than fp32, e.g. int8) stay out of steps 3-4: each is
judged against the fp32 version it was made from (`derived_from`) with VARIANT_TOLERANCES, is READY when it
passes and that source is READY, and "name@int8" means the newest READY int8 variant (Decision.variants).

policy.json in <store>/<name>/ (written atomically by `python -m ganserve.store`, read at every scan, so it
changes without a restart; it beats the server's --version-policy flag for its model):
    {"mode": "latest" | "pinned" | "specific", "version": 7, "versions": [5, 7], "promoted": [8], "retired": [9]}
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ganserve.store import manifest as mf
from ganserve.store import sessions

READY, UNAVAILABLE, CANDIDATE, RETIRED = "READY", "UNAVAILABLE", "CANDIDATE", "RETIRED"
MODES = ("latest", "pinned", "specific")
POLICY_FILE = "policy.json"

# figure -> (direction, tolerance, relative?): a new version may be worse than the serving one by at most
# `tolerance` (absolute, or a fraction of the serving value when relative). +1: higher is better.
TOLERANCES: dict[str, tuple[int, float, bool]] = {
    "conditional_accuracy": (+1, 0.02, False),  # evaluator accuracy of the requested class (MNIST, conditional)
    "frechet": (-1, 0.10, True),                 # Frechet distance on evaluator features: 10% worse at most
    "kl_uniform": (-1, 0.02, False),             # class KL of the predicted histogram from uniform (nats)
    "precision": (+1, 0.05, False),              # k-NN precision/recall on evaluator features
    "recall": (+1, 0.05, False),
    "modes": (+1, 0.0, False),                   # 2-D mixtures: modes covered, never fewer
    "high_quality": (+1, 0.05, False),           # fraction within 3 std of a mode
    "reverse_kl": (-1, 0.05, False),             # KL(Q || P) with the true density (nats)
}

# What a reduced-precision variant may lose against its own fp32 source (the precision targets of docs/precision.md).
VARIANT_TOLERANCES: dict[str, tuple[int, float, bool]] = {
    "conditional_accuracy": (+1, 0.003, False),  # 0.3 points
    "frechet": (-1, 0.15, True),
    "kl_uniform": (-1, 0.02, False),
    "precision": (+1, 0.05, False),
    "recall": (+1, 0.05, False),
}


class PolicyError(ValueError):
    """A version policy that cannot be applied (bad flag, bad file, impossible promote/rollback)."""


@dataclass(frozen=True)
class Policy:
    mode: str = "latest"
    version: int | None = None                # pinned
    versions: tuple[int, ...] = ()            # specific
    promoted: tuple[int, ...] = ()            # accepted whatever the gate says
    retired: tuple[int, ...] = ()             # rolled back: not served

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode == "pinned":
            out["version"] = self.version
        if self.mode == "specific":
            out["versions"] = list(self.versions)
        return {**out, "promoted": list(self.promoted), "retired": list(self.retired)}


@dataclass(frozen=True)
class Decision:
    """The states of one model's versions and its default version (None: nothing can be the default)."""

    states: dict[int, tuple[str, str]] = field(default_factory=dict)  # version -> (state, reason)
    default: int | None = None
    variants: dict[str, int] = field(default_factory=dict)  # precision -> the version "name@<precision>" means


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                              for v in value):
        raise PolicyError(f"{what} must be a list of positive version numbers, got {value!r}")
    return tuple(sorted(set(value)))


def from_json(data: Any) -> Policy:
    if not isinstance(data, dict):
        raise PolicyError("a policy must be a JSON object")
    unknown = set(data) - {"mode", "version", "versions", "promoted", "retired"}
    if unknown:
        raise PolicyError(f"unknown policy keys {sorted(unknown)}")
    mode = data.get("mode", "latest")
    if mode not in MODES:
        raise PolicyError(f"mode must be one of {MODES}, got {mode!r}")
    version = data.get("version")
    if mode == "pinned" and not (isinstance(version, int) and version > 0):
        raise PolicyError("mode pinned needs a positive `version`")
    versions = _ints(data.get("versions", []), "versions")
    if mode == "specific" and not versions:
        raise PolicyError("mode specific needs `versions`")
    return Policy(mode, version if mode == "pinned" else None, versions if mode == "specific" else (),
                  _ints(data.get("promoted", []), "promoted"), _ints(data.get("retired", []), "retired"))


def parse_flag(text: str) -> dict[str, Policy]:
    """--version-policy 'cgan-mnist=pinned:11;gan-mnist=specific:8,9;wgan-gp-mnist=latest' -> {name: Policy}."""
    out = {}
    for item in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, spec = item.partition("=")
        mode, _, arg = spec.partition(":")
        if not sep or not name.strip():
            raise PolicyError(f"version policy {item!r}: expected name=latest | name=pinned:V | name=specific:V,W")
        try:
            numbers = [int(a) for a in arg.split(",") if a.strip()]
        except ValueError as e:
            raise PolicyError(f"version policy {item!r}: versions must be integers") from e
        data = {"mode": mode.strip(), "version": numbers[0] if numbers else None, "versions": numbers}
        out[name.strip()] = from_json({k: v for k, v in data.items() if v not in (None, [])})
    return out


def read(model_dir: Path) -> Policy | None:
    """The model's policy.json, or None when there is none. PolicyError when it is unreadable."""
    path = Path(model_dir) / POLICY_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PolicyError(f"{path}: {e}") from e
    try:
        return from_json(json.loads(text))
    except (json.JSONDecodeError, PolicyError) as e:
        raise PolicyError(f"{path}: {e}") from e


def write(model_dir: Path, policy: Policy) -> Path:
    """Replace the model's policy.json atomically (a temporary file renamed over it)."""
    path = Path(model_dir) / POLICY_FILE
    fd, tmp = tempfile.mkstemp(prefix=".policy-", dir=model_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(policy.to_json(), f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def judge(new: dict[str, Any], serving: dict[str, Any], serving_version: int,
          tolerances: dict[str, tuple[int, float, bool]] = TOLERANCES) -> str:
    """'' when figures `new` are not worse than `serving` beyond `tolerances`, else the reason (one line)."""
    worse = []
    for key, (sign, tol, relative) in tolerances.items():
        old = serving.get(key)
        if not isinstance(old, (int, float)) or isinstance(old, bool):
            continue
        value = new.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            worse.append(f"no {key} figure to compare with @{serving_version}'s {old:.4g}")
            continue
        allowed = tol * abs(old) if relative else tol
        if sign * (value - old) < -allowed:
            worse.append(f"{key} {value:.4g} vs @{serving_version}'s {old:.4g} (tolerance "
                         f"{f'{tol:.0%}' if relative else f'{tol:g}'})")
    return ("quality gate: " + "; ".join(worse)) if worse else ""


def decide(manifests: dict[int, dict[str, Any]], policy: Policy, *, gate: bool = True) -> Decision:
    """Apply the rule of the module docstring to a model's loadable versions (version -> manifest)."""
    states: dict[int, tuple[str, str]] = {}
    serving: int | None = None
    variants = {v: m for v, m in manifests.items() if mf.precision(m) != mf.FP32}
    for v in sorted(set(manifests) - set(variants)):
        m = manifests[v]
        if v in policy.retired:
            states[v] = (RETIRED, "rolled back")
            continue
        if policy.mode == "specific" and v not in policy.versions:
            states[v] = (RETIRED, f"not in the version policy's versions {list(policy.versions)}")
            continue
        promoted = v in policy.promoted or (policy.mode == "pinned" and v == policy.version)
        marked = m.get("candidate")
        if marked and not promoted:
            states[v] = (CANDIDATE, f"published as a candidate: {marked}")
            continue
        verdict = "" if (promoted or serving is None or not gate) else judge(
            m.get("metrics") or {}, manifests[serving].get("metrics") or {}, serving)
        if verdict:
            states[v] = (CANDIDATE, verdict)
            continue
        states[v] = (READY, "")
        serving = v
    if policy.mode == "pinned" and policy.version in states and states[policy.version][0] != RETIRED:
        default = policy.version
    else:
        ready = [v for v, (s, _) in states.items() if s == READY]
        default = max(ready) if ready else None
    for v, m in sorted(variants.items()):
        states[v] = _variant_state(v, m, manifests, states, policy, gate)
    newest = {mf.precision(m): v for v, m in sorted(variants.items()) if states[v][0] == READY}
    return Decision(states, default, newest)


def _variant_state(v: int, m: dict[str, Any], manifests: dict[int, dict[str, Any]],
                   states: dict[int, tuple[str, str]], policy: Policy, gate: bool) -> tuple[str, str]:
    """A reduced-precision variant's state: retired like any version, else judged against its fp32 source."""
    if v in policy.retired:
        return RETIRED, "rolled back"
    if policy.mode == "specific" and v not in policy.versions:
        return RETIRED, f"not in the version policy's versions {list(policy.versions)}"
    src = m["derived_from"]
    if src not in manifests or mf.precision(manifests[src]) != mf.FP32 or states[src][0] != READY:
        why = states[src][0] if src in states else "not in the store"
        return CANDIDATE, f"its fp32 source @{src} is {why}"
    if v in policy.promoted or not gate:
        return READY, ""
    verdict = judge(m.get("metrics") or {}, manifests[src].get("metrics") or {}, src, VARIANT_TOLERANCES)
    return (CANDIDATE, f"{mf.precision(m)} variant: {verdict}") if verdict else (READY, "")


def promote(policy: Policy, version: int) -> Policy:
    """The policy with `version` accepted whatever the gate says (pinned: pinned to it)."""
    p = replace(policy, promoted=tuple(sorted({*policy.promoted, version})),
                retired=tuple(v for v in policy.retired if v != version))
    if p.mode == "pinned":
        p = replace(p, version=version)
    if p.mode == "specific" and version not in p.versions:
        p = replace(p, versions=tuple(sorted({*p.versions, version})))
    return p


def rollback(policy: Policy, current: int, previous: int | None) -> Policy:
    """The policy with the default version `current` retired; pinned moves to `previous`."""
    if previous is None:
        raise PolicyError(f"nothing to roll back to: no servable version before @{current}")
    p = replace(policy, retired=tuple(sorted({*policy.retired, current})),
                promoted=tuple(v for v in policy.promoted if v != current))
    return replace(p, version=previous) if p.mode == "pinned" else p


def decide_store(store: Path, name: str, *, gate: bool = True, policy: Policy | None = None) -> tuple[Decision, Policy]:
    """`decide` for a model folder on disk (manifests and sha256 checked; a failing version is UNAVAILABLE).
    What the server's index says, less the failures only loading finds (ONNX Runtime, the probe)."""
    manifests, failed = {}, {}
    for v in sessions.versions(store, name):
        folder = Path(store) / name / str(v)
        try:
            manifests[v] = mf.read_manifest(folder)
            mf.verify_files(folder, manifests[v])
        except (mf.ManifestError, OSError) as e:
            manifests.pop(v, None)
            failed[v] = (UNAVAILABLE, str(e).replace(f"{folder}/", "").replace(str(folder), f"@{v}"))
    policy = policy or read(Path(store) / name) or Policy()
    decision = decide(manifests, policy, gate=gate)
    return Decision({**decision.states, **failed}, decision.default, decision.variants), policy
