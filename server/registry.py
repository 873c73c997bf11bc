"""The model registry: what the store holds, loaded, checked and swapped in atomically while serving.

A scan (at start-up, then every `reload_interval_s`) looks at model_store/<name>/<version>/ folders:
1. skips hidden folders (an interrupted publish leaves `.tmp-*`) and non-numeric names;
2. for a version not yet loaded: reads and validates the manifest (server.manifest), verifies every file's
   sha256, opens one ONNX Runtime session per graph and runs server.load_check (names, dtypes, dims, a dynamic
   batch axis, a probe at several batch sizes with finite outputs in the declared range); any failure at all
   marks that version UNAVAILABLE with a one-line reason (logged, shown by GetModel/ListModels and in
   NOT_FOUND) and leaves everything else untouched (not retried until the folder changes);
3. a version whose folder disappeared is dropped from the table: requests already holding it finish on its
   sessions (they stay in memory until the last reference goes), later ones see NOT_FOUND or the
   remaining versions.
The table is rebuilt and swapped with one assignment, so a request sees either the old or the new table.

Model references are "name" (newest valid version) or "name@version". A name is checked against the
manifest's name pattern before anything else, so "../x", absolute paths or NUL bytes are INVALID_ARGUMENT
and never reach the file system (lookups go to the in-memory table only).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server import manifest as mf
from server.batcher import Batcher
from server.config import Config
from server.errors import InvalidArgument, NotFound, Unavailable
from server.load_check import check_session, probe

log = logging.getLogger("ganserve.registry")

CONDITIONAL_KINDS = ("cgan", "latent-constraint")


def choose_providers(setting: str) -> list[str]:
    """ONNX Runtime providers for `setting` (auto | cpu | cuda), CUDA first when it is wanted and present."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if setting == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if setting == "cuda":
        raise RuntimeError(f"providers=cuda but onnxruntime offers only {available} "
                           "(install onnxruntime-gpu on a machine with a GPU)")
    return ["CPUExecutionProvider"]


def _available() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def parse_ref(ref: str, field_name: str = "model") -> tuple[str, int | None]:
    """'name' or 'name@version' -> (name, version or None); INVALID_ARGUMENT for anything else."""
    name, sep, version = ref.partition("@")
    if not mf.NAME_RE.match(name):
        shown = ref if len(ref) <= 80 else ref[:77] + "..."
        raise InvalidArgument(f"model name must match {mf.NAME_RE.pattern} (optionally @version), got {shown!r}",
                              field_name)
    if not sep:
        return name, None
    if not version.isdigit() or not version.isascii() or len(version) > 9 or int(version) < 1:
        raise InvalidArgument(f"version must be a positive integer, got {version[:20]!r}", field_name)
    return name, int(version)


READY, UNAVAILABLE = "READY", "UNAVAILABLE"


@dataclass(frozen=True, order=True)
class VersionState:
    """A version of the store as the repository index shows it: its state and, unless READY, why."""

    name: str
    version: int
    state: str
    reason: str = ""


def _reason(e: BaseException) -> str:
    """One line saying why a version could not be loaded (ManifestError messages already are)."""
    text = (str(e).strip().splitlines() or [""])[0][:400]
    return text if isinstance(e, mf.ManifestError) else f"{type(e).__name__}: {text}".rstrip(": ")


@dataclass
class LoadedModel:
    """One served model version: its manifest, its ONNX sessions and its batcher."""

    name: str
    version: int
    folder: Path
    manifest: dict[str, Any]
    sessions: dict[str, Any]  # role -> onnxruntime.InferenceSession
    signature: tuple
    batcher: Batcher | None = None
    idle_session: Any = None  # the generator with config.idle_threads intra-op threads (Batcher's idle path)
    _inverter: Any = field(default=None, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def is_evaluator(self) -> bool:
        return self.kind == "evaluator"

    @property
    def latent_dim(self) -> int:
        return int(self.manifest["latent_dim"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def conditional(self) -> bool:
        gen = self.manifest["graphs"].get("generator")
        return (self.kind in CONDITIONAL_KINDS and gen is not None and len(gen["inputs"]) >= 2
                and self.num_classes > 0)

    @property
    def data_kind(self) -> str:
        return self.manifest["data_kind"]

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["output"]["shape"])

    @property
    def value_range(self) -> tuple[float, float] | None:
        vr = self.manifest["output"].get("value_range")
        return (float(vr[0]), float(vr[1])) if vr else None

    @property
    def max_batch_size(self) -> int:
        return int(self.manifest["max_batch_size"])

    def graph(self, role: str) -> dict[str, Any] | None:
        return self.manifest["graphs"].get(role)

    def capabilities(self) -> dict[str, bool]:
        """What the model can do, from its kind and files only (never its name)."""
        conditional = self.conditional
        return {"conditional": conditional,
                # y is a class-probability vector for every conditional kind of this project
                "soft_labels": conditional,
                "invertible": "encoder" in self.sessions and "generator" in self.sessions,
                "optimizable": "generator_grad" in self.sessions and "generator" in self.sessions,
                "has_critic": "critic" in self.sessions}

    def inverter(self):
        """The torch-free inversion runtime over this version's sessions (training/inversion_runtime.py)."""
        if self._inverter is None:
            from training.inversion_runtime import Inverter

            self._inverter = Inverter(generator_grad=self.sessions.get("generator_grad"),
                                      encoder=self.sessions.get("encoder"), generator=self.sessions.get("generator"),
                                      latent_code=self.manifest.get("latent_code"))
        return self._inverter


def _signature(folder: Path) -> tuple:
    st = (folder / "manifest.json").stat() if (folder / "manifest.json").exists() else None
    return (folder.stat().st_ino, st.st_mtime_ns if st else 0, st.st_size if st else 0)


class Registry:
    """Loaded model versions, hot-reloaded from `config.store`."""

    def __init__(self, config: Config, *, make_batcher=None, on_change=None):
        self.config = config
        self.store = Path(config.store)
        self.providers = choose_providers(config.providers)
        self._make_batcher = make_batcher
        self._on_change = on_change or (lambda models: None)
        self._table: dict[str, dict[int, LoadedModel]] = {}
        self._failed: dict[Path, tuple[tuple, VersionState]] = {}  # folder -> (signature, why it failed)
        self._states: dict[tuple[str, int], VersionState] = {}
        self._scan_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = False  # True after the first scan; until then model lookups answer UNAVAILABLE
        log.info("ONNX Runtime providers: %s (available: %s)", self.providers, _available())

    # -- loading ------------------------------------------------------------------------------------------
    def _session(self, model: str | bytes, threads: int | None = None):
        """A session on an ONNX file path or serialized model bytes (a derived graph). Intra-op threads
        beyond the caller's sleep between runs instead of spinning: a spinning pool fights whatever else
        runs on the machine for the cores (DESIGN.md section 8)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or self.config.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if opts.intra_op_num_threads > 1:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(model, sess_options=opts, providers=self.providers)

    def _idle_session(self, generator: str | bytes):
        """The generator again with `idle_threads` intra-op threads, for a small request that finds the model
        idle: one sample of gan-mnist takes 0.30 ms on two threads against 0.46 on one, and both cores are
        free when nothing else is running on the model. None when it would add nothing or never be used (CUDA,
        no more threads than the batcher's sessions, or no idle path: inline_when_idle off or a queue delay).
        Same kernels, same rows: outputs are bit-identical (tested)."""
        c = self.config
        if (not c.inline_when_idle or c.max_queue_delay_ms > 0 or c.idle_threads <= c.intra_op_threads
                or self.providers != ["CPUExecutionProvider"]):
            return None
        return self._session(generator, threads=c.idle_threads)

    def _load(self, folder: Path, signature: tuple) -> LoadedModel:
        manifest = mf.read_manifest(folder)
        mf.verify_files(folder, manifest)
        sessions, graphs = {}, {}
        for role, graph in manifest["graphs"].items():
            model = graphs[role] = mf.graph_model(folder, manifest, role)
            where = f"{folder}/{graph['file']}" if "file" in graph else f"{folder}: {role} (derived)"
            try:
                sessions[role] = self._session(model)
            except Exception as e:  # onnxruntime raises its own types for corrupt or unsupported files
                raise mf.ManifestError(f"{where}: ONNX Runtime cannot load it ({e})") from e
            check_session(role, graph, sessions[role])
        probe(manifest, sessions)
        model = LoadedModel(manifest["name"], int(manifest["version"]), folder, manifest, sessions, signature)
        if "generator" in sessions and self._make_batcher is not None:
            model.idle_session = self._idle_session(graphs["generator"])
            model.batcher = self._make_batcher(model)
        return model

    def scan(self) -> None:
        """One pass over the store (see the module docstring); swaps the table in one assignment."""
        with self._scan_lock:
            old = self._table
            new: dict[str, dict[int, LoadedModel]] = {}
            states: dict[tuple[str, int], VersionState] = {}  # the versions that are not served, and why
            found: set[Path] = set()
            try:
                names = sorted(os.listdir(self.store)) if self.store.is_dir() else []
            except OSError as e:
                log.warning("cannot list the store %s: %s", self.store, e)
                return
            for name in names:
                model_dir = self.store / name
                if name.startswith(".") or not mf.NAME_RE.match(name) or not model_dir.is_dir():
                    continue
                try:
                    versions = sorted(v for v in os.listdir(model_dir) if v.isdigit() and not v.startswith("0"))
                except OSError:
                    continue
                for v in versions:
                    folder = model_dir / v
                    if not folder.is_dir():
                        continue
                    found.add(folder)
                    try:
                        sig = _signature(folder)
                    except OSError:
                        continue
                    current = old.get(name, {}).get(int(v))
                    if current is not None and current.signature == sig:
                        new.setdefault(name, {})[int(v)] = current
                        continue
                    failed = self._failed.get(folder)
                    if failed is not None and failed[0] == sig:
                        states[(name, int(v))] = failed[1]
                        continue
                    try:
                        model = self._load(folder, sig)
                    except Exception as e:  # noqa: BLE001 - whatever fails, only this version is skipped
                        reason = _reason(e)
                        self._failed[folder] = (sig, VersionState(name, int(v), UNAVAILABLE, reason))
                        states[(name, int(v))] = self._failed[folder][1]
                        log.error("skipping %s@%s: %s", name, v, reason,
                                  exc_info=not isinstance(e, (mf.ManifestError, OSError)))
                        if current is not None:  # keep serving what was loaded before
                            new.setdefault(name, {})[int(v)] = current
                        continue
                    self._failed.pop(folder, None)
                    if current is not None and current.batcher is not None:
                        current.batcher.close()
                    new.setdefault(name, {})[int(v)] = model
                    log.info("loaded %s (kind %s, graphs %s, providers %s) from %s", model.ref, model.kind,
                             sorted(model.sessions), next(iter(model.sessions.values())).get_providers(), folder)
            for name, versions in old.items():
                for v, model in versions.items():
                    if new.get(name, {}).get(v) is not model and model.folder not in found:
                        log.warning("%s removed from the store: no longer served", model.ref)
                        if model.batcher is not None:
                            model.batcher.close()
            self._failed = {k: s for k, s in self._failed.items() if k in found}
            changed = {(n, v) for n, vs in new.items() for v in vs} != {(n, v) for n, vs in old.items() for v in vs}
            self._table, self._states = new, states
            self.ready = True
            if changed or old is not new:
                self._on_change(self.models(all_versions=True))

    def start_polling(self) -> None:
        if self.config.reload_interval_s <= 0 or self._thread is not None:
            return

        def loop():
            while not self._stop.wait(self.config.reload_interval_s):
                try:
                    self.scan()
                except Exception:  # noqa: BLE001 - a bad scan must never stop reloading
                    log.exception("store scan failed")

        self._thread = threading.Thread(target=loop, name="registry-reload", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        for versions in self._table.values():
            for model in versions.values():
                if model.batcher is not None:
                    model.batcher.close()

    # -- lookups (memory only) ----------------------------------------------------------------------------
    def models(self, *, all_versions: bool = False) -> list[LoadedModel]:
        table = self._table
        out = []
        for name in sorted(table):
            versions = sorted(table[name])
            out += [table[name][v] for v in (versions if all_versions else versions[-1:])]
        return out

    def versions(self, name: str) -> list[int]:
        return sorted(self._table.get(name, {}))

    def states(self) -> list[VersionState]:
        """Every version in the store with its state: READY (served) or UNAVAILABLE with the reason."""
        table, skipped = self._table, self._states
        ready = [VersionState(n, v, READY) for n, vs in table.items() for v in vs]
        return sorted([*ready, *(st for key, st in skipped.items() if key[0] not in table or key[1] not in table[key[0]])])

    def _check_ready(self) -> None:
        if not self.ready:
            raise Unavailable("the server is still loading its models; retry shortly")

    def resolve(self, ref: str, field_name: str = "model") -> LoadedModel:
        name, version = parse_ref(ref, field_name)
        self._check_ready()
        versions = self._table.get(name)
        if version is not None and (versions or {}).get(version) is None and (name, version) in self._states:
            st = self._states[(name, version)]
            raise NotFound(f"{name}@{version} is {st.state}: {st.reason}", field_name)
        if not versions:
            skipped = sorted(st for key, st in self._states.items() if key[0] == name)
            if skipped:
                raise NotFound(f"no version of {name!r} can be served: "
                               + "; ".join(f"@{st.version} {st.state}: {st.reason}" for st in skipped), field_name)
            raise NotFound(f"no model named {name!r} is served", field_name)
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise NotFound(f"{name} has no version {version}; served: {sorted(versions)}", field_name)
        return versions[version]

    def default(self, *, conditional: bool, data_kind: str | None = "image") -> LoadedModel:
        """The model an empty `model` field means: the configured default, else the first eligible by name."""
        self._check_ready()
        configured = self.config.default_conditional_model if conditional else self.config.default_model
        if configured:
            return self.resolve(configured)
        for model in self.models():
            if (not model.is_evaluator and model.conditional == conditional
                    and (data_kind is None or model.data_kind == data_kind)):
                return model
        what = "conditional" if conditional else "unconditional"
        raise NotFound(f"no {what} {data_kind or ''} model is served; name one in `model`".replace("  ", " "),
                       "model")

    def evaluator(self) -> LoadedModel | None:
        """The newest evaluator classifier in the store (kind 'evaluator'), if any."""
        found = [m for m in self.models() if m.is_evaluator and "classifier" in m.sessions]
        return found[0] if found else None

