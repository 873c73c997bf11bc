"""A served model version (its manifest, ONNX sessions and batcher), what a model can do, and model references.

What a model can do follows from its manifest's kind and graphs, never its name, so the repository index can
describe a version that is not loaded (server/registry.py loads versions on first use).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganserve.conditions import is_conditional
from ganserve.inversion.runtime import Inverter
from ganserve.store import manifest as mf
from ganserve.store import sessions as stores
from ganserve.store.check import open_version
from ganserve.store.policy import READY
from server.batcher import Batcher
from server.config import Config
from server.errors import InvalidArgument, NotFound

log = logging.getLogger("ganserve.registry")

def capabilities(manifest: dict[str, Any]) -> dict[str, bool]:
    """What the model can do, from its kind and graphs only (never its name). Every graph the manifest names
    gets a session at load, or the version is not served."""
    graphs, conditional = manifest["graphs"], is_conditional(manifest)
    return {"conditional": conditional,
            # y is a class-probability vector for every conditional kind of this project
            "soft_labels": conditional,
            "invertible": "encoder" in graphs and "generator" in graphs,
            "optimizable": "generator_grad" in graphs and "generator" in graphs,
            "has_critic": "critic" in graphs}


def parse_ref(ref: str, field_name: str = "model", *, precision: bool = False) -> tuple:
    """'name' or 'name@version' -> (name, version or None); INVALID_ARGUMENT for anything else. With `precision`,
    a third item: the precision word of 'name@int8' (mf.PRECISIONS; '' for fp32 and every other form)."""
    name, sep, version = ref.partition("@")
    if precision:
        word = version if version in mf.PRECISIONS else ""
        return (name, None, "" if word == mf.FP32 else word) if word else (*parse_ref(ref, field_name), "")
    if not mf.NAME_RE.fullmatch(name):
        shown = ref if len(ref) <= 80 else ref[:77] + "..."
        raise InvalidArgument(f"model name must match {mf.NAME_RE.pattern} (optionally @version), got {shown!r}",
                              field_name)
    if not sep:
        return name, None
    if not version.isdigit() or not version.isascii() or len(version) > 9 or int(version) < 1:
        raise InvalidArgument(f"version must be a positive integer, got {version[:20]!r}", field_name)
    return name, int(version)


def variant_version(name: str, word: str, versions: dict[int, Any], field_name: str = "model") -> int:
    """The version "name@<word>" means (word: a precision, e.g. int8): the newest READY version whose manifest
    says that precision (ganserve.store.policy judged each variant against its fp32 source); NOT_FOUND else."""
    ready = [v for v, e in versions.items() if e.state == READY and mf.precision(e.manifest or {}) == word]
    if not ready:
        raise NotFound(f"{name} has no {word} variant that can be served (a variant is READY when its fp32 "
                       f"source is and its figures pass; see GetModel(all versions)); {name} alone is fp32",
                       field_name)
    return max(ready)


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
        return is_conditional(self.manifest)

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
        return capabilities(self.manifest)

    def inverter(self):
        """The torch-free inversion runtime over this version's sessions (ganserve/inversion/runtime.py)."""
        if self._inverter is None:
            self._inverter = Inverter(generator_grad=self.sessions.get("generator_grad"),
                                      encoder=self.sessions.get("encoder"), generator=self.sessions.get("generator"),
                                      latent_code=self.manifest.get("latent_code"))
        return self._inverter


class Loader:
    """Turns a version folder into a checked LoadedModel (sessions, probe, batcher); raises on any problem."""

    def __init__(self, config: Config, make_batcher=None):
        self.config = config
        self.providers = stores.choose_providers(config.providers)
        self._make_batcher = make_batcher
        log.info("ONNX Runtime providers: %s (available: %s)", self.providers, stores.available_providers())

    def session(self, model: str | bytes, threads: int | None = None):
        """A session on an ONNX file path or serialized model bytes (a derived graph)."""
        return stores.open_session(model, threads=threads or self.config.intra_op_threads, providers=self.providers)

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
        return self.session(generator, threads=c.idle_threads)

    def load(self, folder: Path, signature: tuple) -> LoadedModel:
        manifest, sessions, graphs = open_version(folder, threads=self.config.intra_op_threads,
                                                  providers=self.providers)
        model = LoadedModel(manifest["name"], int(manifest["version"]), folder, manifest, sessions, signature)
        if "generator" in sessions and self._make_batcher is not None:
            model.idle_session = self._idle_session(graphs["generator"])
            model.batcher = self._make_batcher(model)
        return model
