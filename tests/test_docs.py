"""The front door and the docs pages: generated blocks are current, links resolve, the README stays short.

Regenerate stale blocks with `python -m docs.generate` (docs/generate.py says where each one comes from).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docs import generate
from server.config import from_args

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_generated_blocks_are_current():
    assert generate.stale() == [], "generated blocks are stale: run `python -m docs.generate`"


def test_render_replaces_only_the_block_and_needs_its_markers():
    text = "hand\n<!-- BEGIN GENERATED x (note) -->\nold\n<!-- END GENERATED x -->\nhand again\n"
    assert generate.render(text, {"x": lambda root: "new"}) == (
        "hand\n<!-- BEGIN GENERATED x (note) -->\nnew\n<!-- END GENERATED x -->\nhand again\n")
    with pytest.raises(ValueError, match="GENERATED y"):
        generate.render(text, {"y": lambda root: "new"})


def test_flags_table_has_every_server_flag(capsys):
    """Every flag `python -m server --help` prints, in its order, with its environment variable."""
    with pytest.raises(SystemExit):
        from_args(["--help"], env={})
    helped = [f for f in re.findall(r"^  (--[a-z-]+)", capsys.readouterr().out, re.M) if f != "--help"]
    table = generate.flags_block()
    assert re.findall(r"^\| `(--[a-z-]+)` \|", table, re.M) == helped
    assert len(helped) > 40
    assert "| `--address` | `GANSERVE_ADDRESS` | `localhost:50051` |" in table
    assert "| `--inline-when-idle` | `GANSERVE_INLINE_WHEN_IDLE` | `true` |" in table


def test_operations_page_lists_every_server_metric():
    """Every metric the Python server exports has its row in docs/operations.md (counters with their _total)."""
    from server.telemetry import Telemetry

    page = (ROOT / "docs" / "operations.md").read_text()
    listed = set(re.findall(r"`(ganserve_[a-z_]+)`", page))
    exported = {f.name + ("_total" if f.type == "counter" else "") for f in Telemetry().registry.collect()}
    assert len(exported) >= 10 and exported - listed == set()


def test_models_block_is_the_summary_table():
    block = generate.models_block()
    assert block.startswith("| model | kind | generator params |")
    assert "| `cgan-mnist@11` | cgan | 344,833 |" in block
    assert "| `cgan-mnist@12` | cgan | 344,833 |" in block  # an int8 variant has its fp32 source's parameters
    assert " | ? | " not in block


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert 50 <= lines <= 300, lines


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    """Every relative link of every page points at a file or folder in the repository, and an anchor at a
    heading of the page it names."""
    missing = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            missing.append(target)
    assert missing == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_outside_the_repository(page):
    """Pages cite what a reader of the repository can open: no design notes kept elsewhere, no issue tracker."""
    text = page.read_text()
    assert OUTSIDE.findall(text) == []


OUTSIDE = re.compile(r"DESIGN\.md|\.\./shared|/work/|\b[Ii]ssues? \d+|\b[Ii]ssue-\d+|\b[Ii]ssue's\b")
CODE = (".py", ".go", ".js", ".proto", ".toml", ".sh", ".cfg", ".yaml", ".yml")


def test_code_cites_nothing_outside_the_repository():
    """Docstrings and comments cite what a reader of the repository can open (docs/design.md for the history),
    not an issue tracker or design notes kept elsewhere."""
    skip = {".git", ".venv", "build", "node_modules", "model_store", "__pycache__", ".pytest_cache"}
    hits = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if skip & set(rel.parts) or not path.is_file() or not (path.suffix in CODE or path.name == "Makefile"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line) and path != Path(__file__):
                hits.append(f"{rel}:{number}: {line.strip()}")
    assert hits == [], "\n".join(hits)


def test_readme_links_every_docs_page():
    """A page nobody links is a page nobody finds: every docs/ page is linked from the README or another page."""
    linked = set()
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
                linked.add((page.parent / target.split("#")[0]).resolve())
    orphans = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in linked]
    assert orphans == []


# --- the README's tour, run as written against a server over the shipped store ----------------------------

STORE = ROOT / "model_store"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def _same_up_to_rounding(printed: str, shown: str) -> None:
    """The same words, and numbers within what the last printed digit (or float rounding) can move."""
    assert NUMBER.sub("#", printed) == NUMBER.sub("#", shown), (printed, shown)
    for got, want in zip(NUMBER.findall(printed), NUMBER.findall(shown), strict=True):
        assert float(got) == pytest.approx(float(want), rel=1e-3, abs=2e-4), (got, want)


@pytest.fixture(scope="module")
def shipped():
    from tests.conftest import start_server

    if not all((STORE / name).is_dir() for name in ("cgan-mnist", "gan-mnist", "mnist-evaluator")):
        pytest.skip("model_store/ lacks the models the README's tour uses")
    running = start_server(STORE, reload_interval_s=0, metrics_port=-1)
    yield running
    running.app.stop(0)


@pytest.mark.slow
def test_readme_sdk_tour_prints_what_the_readme_shows(shipped, tmp_path, monkeypatch, capsys):
    """The README's first Python block, run as written (Client() finds the server through $GANSERVE_TARGET),
    prints the text block under it: update the README when a shipped model's version or figures change."""
    readme = (ROOT / "README.md").read_text()
    code, shown = _blocks(readme, "python")[0], _blocks(readme, "text")[0]
    monkeypatch.setenv("GANSERVE_TARGET", shipped.target)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (SDK tour)", "exec"), {"__name__": "__readme__"})
    _same_up_to_rounding(capsys.readouterr().out, shown)
    assert (tmp_path / "seven.png").is_file() and (tmp_path / "four.png").is_file()


def test_readme_grpc_stub_example_prints_its_comment(shipped, capsys):
    """The README's plain-stubs block against the server (its address swapped for the test server's)."""
    code = _blocks((ROOT / "README.md").read_text(), "python")[1]
    exec(compile(code.replace("localhost:50051", shipped.target), "README.md (stubs)", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed == re.search(r"# (cgan-mnist@\d+ \(2, 1, 28, 28\))", code).group(1)
