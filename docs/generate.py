"""Rewrite the generated blocks of README.md and docs/*.md from their sources: `python -m docs.generate`.

A block sits between `<!-- BEGIN GENERATED <name> ... -->` and `<!-- END GENERATED <name> -->`; everything
outside the markers is written by hand. tests/test_docs.py fails when a block is stale (`--check` here does
the same). Sources:
  models    docs/models/summary.json (written by `python -m training.evaluate ... --docs docs/models`)
  headline  docs/bench.json (written by `python -m bench --json docs/bench.json`)
  flags     server/config.py (the Config dataclass behind `python -m server --help`)
and one whole page: docs/models/README.md, from docs/models/summary.json (as training.evaluate writes it).
docs/bad_input.md is generated from a live server instead: `python -m tests.test_server_bad_input >
docs/bad_input.md`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from server.config import ENV_PREFIX, Config
from training.evaluate import markdown_table, models_readme

ROOT = Path(__file__).resolve().parent.parent
COMMAND = "python -m docs.generate"


def models_block(root: Path = ROOT) -> str:
    """The shipped models with their judged figures: the table of docs/models/README.md, from summary.json."""
    summary = json.loads((root / "docs" / "models" / "summary.json").read_text())
    return markdown_table(summary["models"])


# The three figures a reader asks first, by the target each one is judged against (bench's own wording).
HEADLINE = (
    ("n=1, one client (Python client)", "[Python client] n=1, one client:"),
    ("32 single-sample clients, `--frontend native` (native client)",
     "[native client] 32 single-sample clients: >= 60% of in-process best samples/s, p99 <= 50 ms (variant"),
    ("one n=256 request (Python client)", "[Python client] n=256 request:"),
)


def headline_block(root: Path = ROOT) -> str:
    """The headline performance rows, quoted from the committed benchmark run (docs/bench.json)."""
    bench = json.loads((root / "docs" / "bench.json").read_text())
    m, started = bench["machine"], bench["started"]
    when = f"{started[:4]}-{started[4:6]}-{started[6:8]} {started[9:11]}:{started[11:13]} UTC"
    lines = [f"| {bench['primary']}, {m['cores']}-core {m['cpu']}, {when} | measured | target met |",
             "| --- | --- | --- |"]
    for label, prefix in HEADLINE:
        target = next(t for t in bench["targets"] if t["target"].startswith(prefix))
        lines.append(f"| {label} | {target['measured']} | {'yes' if target['met'] else 'no'} |")
    return "\n".join(lines)


def _default(f) -> str:
    value = f.default if f.default is not MISSING else f.default_factory()
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`" if value != "" else '`""`'


def flags_block(root: Path = ROOT) -> str:
    """Every server setting: flag, environment variable, default, meaning (server/config.py)."""
    lines = ["| flag | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(Config):
        meaning = f.metadata["help"].replace("|", "\\|")
        lines.append(f"| `--{f.name.replace('_', '-')}` | `{ENV_PREFIX}{f.name.upper()}` | {_default(f)} | {meaning} |")
    return "\n".join(lines)


BLOCKS = {  # file (relative to the root) -> {block name: renderer}
    "README.md": {"models": models_block, "headline": headline_block},
    "docs/operations.md": {"flags": flags_block},
}


def models_page(root: Path = ROOT) -> str:
    """docs/models/README.md, the page `python -m training.evaluate ... --docs docs/models` writes."""
    summary = json.loads((root / "docs" / "models" / "summary.json").read_text())
    return models_readme(summary["models"], summary["generated_by"], root / "docs" / "models")


PAGES = {"docs/models/README.md": models_page}  # whole files


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- BEGIN GENERATED {name}\b[^\n]*-->\n)(.*?)(<!-- END GENERATED {name} -->)", re.S)


def render(text: str, blocks: dict, root: Path = ROOT) -> str:
    """`text` with each named block replaced by its renderer's output (a missing marker is an error)."""
    for name, make in blocks.items():
        pattern = _pattern(name)
        if not pattern.search(text):
            raise ValueError(f"no '<!-- BEGIN GENERATED {name} -->' ... '<!-- END GENERATED {name} -->' markers")
        body = make(root)
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(3), text, count=1)
    return text


def stale(root: Path = ROOT) -> list[str]:
    """Files whose generated blocks differ from what their sources give now."""
    blocks = [rel for rel, named in BLOCKS.items()
              if render((root / rel).read_text(), named, root) != (root / rel).read_text()]
    return blocks + [rel for rel, make in PAGES.items() if make(root) != (root / rel).read_text()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a block is stale")
    args = p.parse_args(argv)
    if args.check:
        old = stale()
        for rel in old:
            print(f"{rel} is stale: run `{COMMAND}`", file=sys.stderr)
        return 1 if old else 0
    for rel in stale():
        path = ROOT / rel
        path.write_text(PAGES[rel](ROOT) if rel in PAGES else render(path.read_text(), BLOCKS[rel]))
        print(f"rewrote {rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
