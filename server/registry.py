"""The model registry: the repository index of the store, versions loaded on first use, the version policy.

A scan (at start-up, then every `reload_interval_s`) looks at model_store/<name>/<version>/ folders:
1. skips hidden folders (an interrupted publish leaves `.tmp-*`) and non-numeric names;
2. reads each new version's manifest and checks its files' sha256 (no sessions yet); a bad one is UNAVAILABLE;
3. applies the model's version policy and quality gate (ganserve.store.policy.decide: READY, CANDIDATE,
   RETIRED, and the default version "name" resolves to) from <store>/<name>/policy.json, else --version-policy;
4. loads the warm set (`warm_models`: each model's default version by default; "all" = every version) and
   swaps the index in one assignment, so a request sees either the old or the new index.
A version outside the warm set loads on first use (with --check-cold-versions it is also load-checked once in
the background and let go, so a broken one is UNAVAILABLE before anyone calls it). Loading verifies sha256,
opens one ONNX Runtime session per graph and runs ganserve.store.check (names, dtypes, dims, a dynamic batch
axis, a probe at several batch sizes: finite outputs in the declared range). Any failure marks that version
UNAVAILABLE with a one-line reason (logged, in GetModel/ListModels and NOT_FOUND), not retried until its folder
changes; a default that fails hands "name" to the next version the policy allows.
Beyond `model_memory_mb`, the least recently used resident versions outside the warm set are evicted: their
batchers close, requests already holding them finish on their sessions (freed with the last reference).

Model references are "name" (the default version), "name@version" or "name@int8". A name is checked against the
manifest's name pattern before anything else, so "../x", absolute paths or NUL bytes are INVALID_ARGUMENT
and never reach the file system (lookups go to the in-memory index only).
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganserve.store import manifest as mf
from ganserve.store import policy as pol
from ganserve.store import sessions as stores
from ganserve.store.check import open_version
from server.config import Config
from server.errors import NotFound, Unavailable
from server.model import LoadedModel, Loader, is_conditional, parse_ref, variant_version  # noqa: F401 - re-exported

log = logging.getLogger("ganserve.registry")

READY, UNAVAILABLE, CANDIDATE, RETIRED = pol.READY, pol.UNAVAILABLE, pol.CANDIDATE, pol.RETIRED
CALLABLE = (READY, CANDIDATE)


def _reason(e: BaseException) -> str:
    """One line saying why a version could not be loaded (ManifestError messages already are)."""
    text = (str(e).strip().splitlines() or [""])[0][:400]
    return text if isinstance(e, mf.ManifestError) else f"{type(e).__name__}: {text}".rstrip(": ")


def _signature(folder: Path) -> tuple:
    st = (folder / "manifest.json").stat() if (folder / "manifest.json").exists() else None
    return (folder.stat().st_ino, st.st_mtime_ns if st else 0, st.st_size if st else 0)


def unknown_model(name: str, served: list[str]) -> str:
    """NOT_FOUND's message for a name nobody serves: the served names and the closest one."""
    close = difflib.get_close_matches(name, served, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"no model named {name!r} is served{hint} (served: {', '.join(served) or 'none'})"


@dataclass(eq=False)
class Entry:
    """One version folder in the index: its manifest, state, and its LoadedModel while resident."""

    name: str
    version: int
    folder: Path
    signature: tuple
    manifest: dict[str, Any] | None
    failure: str = ""          # why it cannot be loaded (sticky until the folder changes)
    state: str = READY
    reason: str = ""
    model: LoadedModel | None = None
    cost: int = 0              # bytes of its graphs (the model-memory budget counts these)
    last_used: float = 0.0
    checked: bool = False      # loaded (or load-checked) once: its graphs passed everything
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Index:
    entries: dict[str, dict[int, Entry]]
    defaults: dict[str, int]


def _cost(folder: Path, manifest: dict[str, Any]) -> int:
    """Bytes of the version's graphs on disk (a derived gradient graph holds the generator's weights again)."""
    sizes = {f: (folder / f).stat().st_size for f in manifest["files"] if f.endswith(".onnx")}  # verified: exist
    derived = sum(sizes.get(manifest["graphs"]["generator"]["file"], 0)
                  for g in manifest["graphs"].values() if "derive" in g)
    return sum(sizes.values()) + derived


class Registry:
    """The repository index of `config.store`, hot-reloaded, with versions resident on demand."""

    def __init__(self, config: Config, *, make_batcher=None, on_change=None):
        self.config = config
        self.store = Path(config.store)
        self.loader = Loader(config, make_batcher)
        self._on_change = on_change or (lambda registry: None)
        self._index = Index({}, {})
        self._flag_policies = pol.parse_flag(config.version_policy)
        self._failed: dict[Path, tuple[tuple, str]] = {}  # folder -> (signature, why it failed)
        self._warm: set[tuple[str, int]] = set()
        self._scan_lock = threading.RLock()
        self._budget_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = False  # True after the first scan; until then model lookups answer UNAVAILABLE

    # -- the scan -----------------------------------------------------------------------------------------
    def _entry(self, name: str, version: int, folder: Path, sig: tuple) -> Entry:
        failed = self._failed.get(folder)
        if failed is not None and failed[0] == sig:
            return Entry(name, version, folder, sig, None, failure=failed[1])
        try:
            manifest = mf.read_manifest(folder)
            mf.verify_files(folder, manifest)  # cheap next to sessions; the sessions wait for the first use
            return Entry(name, version, folder, sig, manifest, cost=_cost(folder, manifest))
        except Exception as e:  # noqa: BLE001 - whatever fails, only this version is skipped
            return self._fail(Entry(name, version, folder, sig, None), e)

    def _fail(self, entry: Entry, e: BaseException) -> Entry:
        entry.failure = _reason(e)
        self._failed[entry.folder] = (entry.signature, entry.failure)
        log.error("skipping %s: %s", entry.ref, entry.failure, exc_info=not isinstance(e, (mf.ManifestError, OSError)))
        return entry

    def _policy(self, name: str) -> pol.Policy:
        try:
            found = pol.read(self.store / name)
        except pol.PolicyError as e:
            log.error("%s: %s; using the server's policy for %s", name, e, name)
            found = None
        return found or self._flag_policies.get(name) or pol.Policy()

    def _decide(self, name: str, versions: dict[int, Entry]) -> int | None:
        """Set each version's state from the policy and the gate; return the default version."""
        decision = pol.decide({v: e.manifest for v, e in versions.items() if not e.failure}, self._policy(name),
                              gate=self.config.quality_gate)
        for v, e in versions.items():
            e.state, e.reason = (UNAVAILABLE, e.failure) if e.failure else decision.states[v]
        return decision.default

    def _warm_set(self, entries: dict[str, dict[int, Entry]], defaults: dict[str, int]) -> set[tuple[str, int]]:
        words = {w.strip() for w in self.config.warm_models.split(",") if w.strip()}
        warm = set()
        for name, versions in entries.items():
            for v, e in versions.items():
                if e.state not in CALLABLE:
                    continue
                if ("all" in words or name in words or e.ref in words
                        or (v == defaults.get(name) and "defaults" in words)):
                    warm.add((name, v))
        return warm

    def scan(self) -> None:
        """One pass over the store (see the module docstring); swaps the index in one assignment."""
        with self._scan_lock:
            old = self._index
            entries: dict[str, dict[int, Entry]] = {}
            try:
                names = sorted(os.listdir(self.store)) if self.store.is_dir() else []
            except OSError as e:
                log.warning("cannot list the store %s: %s", self.store, e)
                return
            for name in names:
                model_dir = self.store / name
                if name.startswith(".") or not mf.NAME_RE.fullmatch(name) or not model_dir.is_dir():
                    continue
                for v in stores.versions(self.store, name):
                    folder = model_dir / str(v)
                    try:
                        sig = _signature(folder)
                    except OSError:
                        continue
                    current = old.entries.get(name, {}).get(v)
                    keep = current is not None and current.signature == sig
                    entries.setdefault(name, {})[v] = current if keep else self._entry(name, v, folder, sig)
            defaults = {name: self._decide(name, versions) for name, versions in entries.items()}
            seen = {e.folder for versions in entries.values() for e in versions.values()}
            self._failed = {k: f for k, f in self._failed.items() if k in seen}
            for name in sorted(entries):  # load the warm set; a default that fails hands over to the next one
                for _ in range(len(entries[name]) + 1):
                    warm = sorted(self._warm_set({name: entries[name]}, defaults))
                    if all([self._resident(entries[n][v], after_failure=None) is not None for n, v in warm]):
                        break
                    defaults[name] = self._decide(name, entries[name])
            self._warm = self._warm_set(entries, defaults)
            self._index = Index(entries, defaults)
            self.ready = True
            for name, versions in old.entries.items():
                for v, e in versions.items():
                    if entries.get(name, {}).get(v) is not e and e.model is not None:
                        log.warning("%s changed or removed from the store: no longer served", e.ref)
                        self._drop(e)
            self._evict()
            self._on_change(self)

    def _redecide(self, name: str) -> None:
        """After a version of `name` failed to load on first use: its states and default again."""
        with self._scan_lock:
            index = self._index
            if name in index.entries:
                defaults = dict(index.defaults)
                defaults[name] = self._decide(name, index.entries[name])
                self._index = Index(index.entries, defaults)
        self._on_change(self)

    # -- residency ----------------------------------------------------------------------------------------
    def _resident(self, e: Entry, *, after_failure: Any = "redecide") -> LoadedModel | None:
        """The entry's LoadedModel, loading it first if needed; None (and the entry UNAVAILABLE) if it fails.
        Outside a scan, a failure re-decides the model's default and a load may evict others."""
        model = e.model
        if model is None:
            with e.lock:
                if e.model is None and not e.failure:
                    started = time.perf_counter()
                    try:
                        e.model = self.loader.load(e.folder, e.signature)
                    except Exception as ex:  # noqa: BLE001 - whatever fails, only this version is skipped
                        self._fail(e, ex)
                    else:
                        e.checked = True
                        log.info("loaded %s (kind %s, graphs %s) in %.0f ms", e.ref, e.manifest["kind"],
                                 sorted(e.model.sessions), 1000 * (time.perf_counter() - started))
                model = e.model
            if model is None:
                if after_failure:
                    self._redecide(e.name)
                return None
            if after_failure:
                self._evict(keep=e)
        e.last_used = time.monotonic()
        return model

    def _drop(self, e: Entry) -> None:
        model, e.model = e.model, None
        if model is not None and model.batcher is not None:
            model.batcher.close()  # requests holding the model finish on the caller's thread

    def _evict(self, keep: Entry | None = None) -> None:
        """Evict least recently used versions outside the warm set until the resident graphs fit the budget."""
        budget = int(self.config.model_memory_mb * 2**20)
        if budget <= 0:
            return
        with self._budget_lock:
            resident = [e for vs in self._index.entries.values() for e in vs.values() if e.model is not None]
            if keep is not None and keep not in resident:
                resident.append(keep)
            total = sum(e.cost for e in resident)
            for e in sorted(resident, key=lambda e: e.last_used):
                if total <= budget:
                    break
                if e is keep or (e.name, e.version) in self._warm:
                    continue
                self._drop(e)
                total -= e.cost
                log.info("evicted %s (least recently used; %d MiB resident of %d MiB)", e.ref, total >> 20,
                         budget >> 20)

    # -- polling ------------------------------------------------------------------------------------------
    def check_cold(self) -> int:
        """Load-check every callable version never loaded yet (sessions, probe), one at a time, and let it go:
        a broken old version shows UNAVAILABLE in the index before anyone calls it. Returns how many failed."""
        failed = 0
        for e in self.entries():
            if self._stop.is_set():
                break
            if e.checked or e.model is not None or e.failure or e.state not in CALLABLE:
                continue
            try:
                open_version(e.folder, providers=self.loader.providers)
                e.checked = True
            except Exception as ex:  # noqa: BLE001 - whatever fails, only this version is skipped
                self._fail(e, ex)
                self._redecide(e.name)
                failed += 1
        return failed

    def start_polling(self) -> None:
        """The background thread: check cold versions (--check-cold-versions), then rescan every interval."""
        if self._thread is not None or (self.config.reload_interval_s <= 0 and not self.config.check_cold_versions):
            return

        def loop():
            while True:
                try:
                    if self.config.check_cold_versions:
                        self.check_cold()
                    if self.config.reload_interval_s <= 0 or self._stop.wait(self.config.reload_interval_s):
                        return
                    self.scan()
                except Exception:  # noqa: BLE001 - a bad scan must never stop reloading
                    log.exception("store scan failed")

        self._thread = threading.Thread(target=loop, name="registry-reload", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        for versions in self._index.entries.values():
            for e in versions.values():
                self._drop(e)

    # -- lookups (memory only, but a lookup of a version that is not resident loads it) ---------------------
    def entries(self, name: str | None = None) -> list[Entry]:
        """Every version in the store (the repository index), or of one model, by name then version."""
        index = self._index
        names = sorted(index.entries) if name is None else [name] if name in index.entries else []
        return [index.entries[n][v] for n in names for v in sorted(index.entries[n])]

    def default_version(self, name: str) -> int | None:
        return self._index.defaults.get(name)

    def models(self, *, all_versions: bool = False) -> list[LoadedModel]:
        """Resident models: each model's default version, or every resident version."""
        index = self._index
        return [e.model for e in self.entries() if e.model is not None
                and (all_versions or index.defaults.get(e.name) == e.version)]

    def versions(self, name: str) -> list[int]:
        """Versions of `name` that can be called (READY or CANDIDATE)."""
        return [v for v, e in sorted(self._index.entries.get(name, {}).items()) if e.state in CALLABLE]

    def _check_ready(self) -> None:
        if not self.ready:
            raise Unavailable("the server is still loading its models; retry shortly")

    def lookup(self, ref: str, field_name: str = "model") -> Entry:
        """The index entry `ref` names, without loading it; NOT_FOUND with the reason when it cannot be called."""
        name, version, word = parse_ref(ref, field_name, precision=True)
        self._check_ready()
        index = self._index
        versions = index.entries.get(name)
        if not versions:
            raise NotFound(unknown_model(name, sorted(index.entries)), field_name)
        version = variant_version(name, word, versions, field_name) if word else version
        v = version if version is not None else index.defaults.get(name)
        if v is None:
            raise NotFound(f"no version of {name!r} can be served: "
                           + "; ".join(f"@{e.version} {e.state}: {e.reason}" for _, e in sorted(versions.items())),
                           field_name)
        e = versions.get(v)
        if e is None:
            raise NotFound(f"{name} has no version {v}; served: {self.versions(name)}", field_name)
        if e.state not in CALLABLE:
            raise NotFound(f"{e.ref} is {e.state}: {e.reason}", field_name)
        return e

    def resolve(self, ref: str, field_name: str = "model") -> LoadedModel:
        """The LoadedModel `ref` names, loaded now if it is not resident."""
        for _ in range(8):  # an unversioned ref whose default fails to load moves to the next default
            e = self.lookup(ref, field_name)
            model = self._resident(e)
            if model is not None:
                return model
            if "@" in ref:
                break
        raise NotFound(f"{e.ref} is UNAVAILABLE: {e.failure}", field_name)

    def default(self, *, conditional: bool, data_kind: str | None = "image") -> LoadedModel:
        """The model an empty `model` field means: the configured default, else the first eligible by name."""
        self._check_ready()
        configured = self.config.default_conditional_model if conditional else self.config.default_model
        if configured:
            return self.resolve(configured)
        index = self._index
        for name in sorted(index.entries):
            v = index.defaults.get(name)
            m = index.entries[name][v].manifest if v is not None else None
            if (m is not None and m["kind"] != "evaluator" and is_conditional(m) == conditional
                    and (data_kind is None or m["data_kind"] == data_kind)):
                return self.resolve(name)
        what = "conditional" if conditional else "unconditional"
        raise NotFound(f"no {what} {data_kind or ''} model is served; name one in `model`".replace("  ", " "),
                       "model")

    def evaluator(self) -> LoadedModel | None:
        """The first evaluator classifier in the store (kind 'evaluator'), if any."""
        index = self._index
        for name in sorted(index.entries):
            v = index.defaults.get(name)
            if v is not None and (index.entries[name][v].manifest or {}).get("kind") == "evaluator":
                try:
                    return self.resolve(name)
                except NotFound:
                    continue
        return None
