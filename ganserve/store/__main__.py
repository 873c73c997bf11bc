"""Operate a model store's versions: python -m ganserve.store [--store DIR] COMMAND.

    list [NAME]          every version with its state (READY, CANDIDATE, RETIRED, UNAVAILABLE) and reason; * = default
    promote NAME@V       accept V whatever the quality gate said (a CANDIDATE becomes READY; a rolled-back one returns)
    rollback NAME        retire the default version: "NAME" means the previous READY version again
    pin NAME@V           NAME always means V (policy pinned)      unpin NAME   back to the newest READY (policy latest)

Each command rewrites <store>/<NAME>/policy.json atomically (ganserve.store.policy); running servers read it at
their next scan (--reload-interval-s, 2 s by default) and swap what "NAME" means in one assignment: a request
runs on the version it resolved, so none is dropped or mixed. Exit status 2 with the reason when impossible.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ganserve.store import policy as pol
from ganserve.store import sessions


def _ref(text: str) -> tuple[str, int]:
    name, _, version = text.partition("@")
    if not version.isdigit():
        raise pol.PolicyError(f"expected NAME@VERSION, got {text!r}")
    return name, int(version)


def _list(store: Path, names: list[str], out) -> None:
    for name in names:
        decision, policy = pol.decide_store(store, name)
        print(f"{name}  (policy {policy.mode}{f' {policy.version}' if policy.mode == 'pinned' else ''})", file=out)
        named = {v: f"  ({name}@{word})" for word, v in decision.variants.items()}  # e.g. gan-mnist@int8
        for v, (state, reason) in sorted(decision.states.items()):
            mark = "*" if v == decision.default else " "
            print(f"  {mark} {v:>4}  {state:<11}  {reason}{named.get(v, '')}".rstrip(), file=out)


def run(store: Path, command: str, args: list[str], out=sys.stdout) -> None:
    """One command (see the module docstring); PolicyError with the reason when it cannot be done."""
    if command == "list":
        names = args or [p.name for p in sorted(store.iterdir()) if sessions.versions(store, p.name)]
        return _list(store, names, out)
    if len(args) != 1:
        raise pol.PolicyError(f"{command} takes one argument")
    if command in ("promote", "pin"):
        name, version = _ref(args[0])
        decision, policy = pol.decide_store(store, name)
        state = decision.states.get(version, ("missing", ""))[0]
        if state in ("missing", pol.UNAVAILABLE):
            raise pol.PolicyError(f"{name}@{version} cannot be served: {decision.states.get(version, ('', 'no such version'))[1]}")
        new = pol.promote(policy, version) if command == "promote" else replace(
            pol.promote(policy, version), mode="pinned", version=version, versions=())
    elif command == "rollback":
        name = args[0]
        decision, policy = pol.decide_store(store, name)
        if decision.default is None:
            raise pol.PolicyError(f"{name} has no default version to roll back")
        current = decision.default
        without = replace(policy, retired=tuple(sorted({*policy.retired, current})), mode="latest", version=None,
                          versions=policy.versions) if policy.mode == "pinned" else replace(
            policy, retired=tuple(sorted({*policy.retired, current})))
        new = pol.rollback(policy, current, pol.decide_store(store, name, policy=without)[0].default)
    elif command == "unpin":
        name = args[0]
        _, policy = pol.decide_store(store, name)
        new = replace(policy, mode="latest", version=None, versions=())
    else:
        raise pol.PolicyError(f"unknown command {command!r}: list, promote, rollback, pin, unpin")
    pol.write(store / name, new)
    decision, _ = pol.decide_store(store, name)
    print(f"{name} now means {name}@{decision.default} (policy.json written; servers switch at their next scan)",
          file=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ganserve.store", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("command", choices=["list", "promote", "rollback", "pin", "unpin"])
    p.add_argument("args", nargs="*")
    a = p.parse_args(argv)
    try:
        run(a.store, a.command, a.args)
    except pol.PolicyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
