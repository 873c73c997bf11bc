"""The commands the README and docs/ show name what exists: every `python -m MODULE` imports (a package has its
`__main__`), every `--flag` given to it is one its source defines (an argparse flag or, for the training
commands' `--key=value`, a config field), every `python path.py` and `make TARGET` is there.

Running each command is the audit's job (it needs a server, minutes and data); these checks are what a doc edit
or a rename breaks without anyone running the page: `python -m sdk.cli` (no such module) and `python -m
bench.oip` (failed at import) were both shown for hours.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
INLINE = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```", re.M | re.S)
PYTHON = re.compile(r"(?:^|[\s;&|(])(?:\.venv/bin/)?python3? +((?:-W +\S+ +)*)(-m +[\w.]+|[\w./-]+\.py)"
                    r"((?: +[^;&|)#]*)?)")
MAKE = re.compile(r"(?:^|[\s;&|(])make +(?:-s +)?([a-z][\w-]*)")
SKIP_MODULES = {"venv", "pip", "pytest"}  # the standard library's and the tools' own


def commands() -> list[tuple[str, str]]:
    """(page:line, command) for every command in a shell-like fenced block and every inline code span."""
    found = []
    for page in PAGES:
        text = page.read_text()
        rel = page.relative_to(ROOT)
        for m in FENCE.finditer(text):
            if m.group(1) not in ("", "bash", "sh", "shell", "console", "text"):
                continue
            first = text.count("\n", 0, m.start(2)) + 1
            for offset, line in enumerate(m.group(2).replace("\\\n", " ").split("\n")):
                found.append((f"{rel}:{first + offset}", line.removeprefix("$ ")))
        for number, line in enumerate(re.sub(FENCE, lambda m: "\n" * m.group(0).count("\n"), text).splitlines(), 1):
            found += [(f"{rel}:{number}", span) for span in INLINE.findall(line)]
    return found


def python_commands() -> list[tuple[str, str, str]]:
    """(where, module or script, its arguments) of every `python -m X ...` / `python x.py ...`."""
    out = []
    for where, cmd in commands():
        for m in PYTHON.finditer(cmd):
            target = m.group(2).removeprefix("-m").strip()
            if target not in SKIP_MODULES:
                out.append((where, target, m.group(3) or ""))
    return out


def _source(target: str) -> str:
    """The Python text a command's flags may be defined in: the script, or every module of the top package."""
    if target.endswith(".py"):
        return (ROOT / target).read_text()
    top = ROOT / target.split(".")[0]
    files = sorted(top.rglob("*.py")) if top.is_dir() else [top.with_suffix(".py")]
    return "\n".join(f.read_text() for f in files)


def test_the_pages_show_python_and_make_commands():
    """The extraction itself: it sees the commands known to be on the pages (a broken regex checks nothing)."""
    targets = {t for _, t, _ in python_commands()}
    assert {"server", "sdk", "sdk.batch", "bench", "bench.oip", "bench.soak", "training.run", "training.publish",
            "ganserve.store", "docs.generate", "examples/divergence_demo.py"} <= targets
    assert len(python_commands()) > 100
    assert {"serve", "test", "gateway", "mutation"} <= {m for _, c in commands() for m in MAKE.findall(c)}


def test_every_documented_module_imports():
    broken = []
    for where, target, _ in python_commands():
        if target.endswith(".py"):
            if not (ROOT / target).is_file():
                broken.append(f"{where}: {target}: no such file")
            continue
        try:
            module = importlib.import_module(target)
        except Exception as e:  # noqa: BLE001 - the report names whatever the import raised
            broken.append(f"{where}: python -m {target}: {type(e).__name__}: {e}")
            continue
        if hasattr(module, "__path__") and importlib.util.find_spec(target + ".__main__") is None:
            broken.append(f"{where}: python -m {target}: a package without __main__")
    assert broken == [], "\n".join(sorted(set(broken)))


def test_every_documented_flag_is_defined():
    """A `--flag` shown with a command is a string its source defines ("--flag"), or a field `flag:` of a
    settings class the parser is built from (the server's flags, training.publish's, training.run's
    `--key=value` overrides). Flags inside a quoted argument (`--variant-args "--workers 2"`) are another
    program's."""
    sources: dict[str, str] = {}
    unknown = []
    for where, target, args in python_commands():
        if target.endswith(".py") and not (ROOT / target).is_file():
            continue  # the import test names it
        src = sources.setdefault(target, _source(target))
        for flag in re.findall(r"(?<![\w-])--([a-z][\w-]*)", re.sub(r"'[^']*'|\"[^\"]*\"", "", args)):
            if flag == "help" or f'"--{flag}"' in src or f"'--{flag}'" in src or \
                    re.search(rf"^\s+{flag.replace('-', '_')}\s*:", src, re.M):
                continue
            unknown.append(f"{where}: python -m {target} --{flag}")
    assert unknown == [], "\n".join(sorted(set(unknown)))


def test_every_documented_make_target_exists():
    makefile = (ROOT / "Makefile").read_text()
    defined = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    missing = [f"{where}: make {t}" for where, cmd in commands() for t in MAKE.findall(cmd) if t not in defined]
    assert missing == []


def test_this_project_is_installed_from_its_checkout():
    """ganserve and ganserve-sdk are on no package index: `pip install 'ganserve[ray]'` finds nothing, so pages,
    messages and comments install them from the checkout (`pip install -e '.[ray]'`, `pip install ./sdk`)."""
    by_name = re.compile(r"pip install (?:-\S+ )*['\"]?ganserve(?:-sdk)?(?:\[|['\"\s`)]|$)")
    files = PAGES + sorted(p for d in ("ganserve", "server", "sdk", "training", "bench", "tests", "deploy")
                           for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".yaml", ".md"))
    hits = [f"{f.relative_to(ROOT)}:{n}: {line.strip()}" for f in [*files, ROOT / "pyproject.toml"]
            for n, line in enumerate(f.read_text().splitlines(), 1) if by_name.search(line) and f != Path(__file__)]
    assert hits == [], "\n".join(hits)
