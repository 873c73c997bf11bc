"""Resolving a model's versions and opening a version's ONNX Runtime sessions: the one implementation.

The registry, the evaluator, export checks, the TorchServe export, inversion and bench all call these, so
"the newest version" and "a session" mean the same thing everywhere.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from ganserve.store.manifest import (
    FP32,
    NAME_RE,
    PRECISIONS,
    ManifestError,
    read_manifest,
    verify_files,
)

CPU = ("CPUExecutionProvider",)


def versions(store: str | Path, name: str) -> list[int]:
    """The published version numbers of `name`, ascending: positive integer folders without a leading zero.

    Hidden `.tmp-*` folders of a publish in progress and anything else are not versions.
    """
    folder = Path(store) / name
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    return sorted(int(p.name) for p in entries
                  if p.name.isascii() and p.name.isdigit() and not p.name.startswith("0") and p.is_dir())


def _precision_of(folder: Path) -> str:
    """The version's precision; fp32 when its manifest cannot be read (the caller's own check reports that)."""
    try:
        return read_manifest(folder).get("precision", FP32)
    except (ManifestError, OSError):
        return FP32


def latest(store: str | Path, name: str, precision: str = FP32) -> Path | None:
    """The newest version folder of `name` at `precision` (fp32: the trained graphs), or None."""
    for v in versions(store, name)[::-1]:
        if _precision_of(Path(store) / name / str(v)) == precision:
            return Path(store) / name / str(v)
    return None


def resolve(store: str | Path, spec: str) -> Path:
    """`name` (its newest fp32 version), `name@version` or `name@int8` (the newest variant at that precision)
    -> the version folder; FileNotFoundError otherwise."""
    name, _, version = spec.partition("@")
    word = version if version in PRECISIONS else ""
    if not NAME_RE.fullmatch(name) or (version and not word and not (version.isascii() and version.isdigit())):
        raise FileNotFoundError(f"invalid model reference {spec!r}: expected name, name@version or name@int8")
    if word:
        path, version = latest(store, name, word), ""
    else:
        path = Path(store) / name / version if version else latest(store, name)
    if path is None or not path.is_dir() or (version and int(version) not in versions(store, name)):
        raise FileNotFoundError(f"model {spec!r} not found in {store}")
    return path


def available_providers() -> list[str]:
    return ort.get_available_providers()


def newest_valid(store: str | Path, name: str, version: int | None = None, precision: str = FP32,
                 ) -> tuple[Path, dict]:
    """(folder, manifest) of `name@version`, or of the newest version at `precision` whose manifest and sha256
    check out.

    FileNotFoundError names each newer version that failed and why."""
    candidates = [version] if version else versions(store, name)[::-1]
    errors = []
    for v in candidates:
        folder = Path(store) / name / str(v)
        try:
            manifest = read_manifest(folder)
            verify_files(folder, manifest)
        except (ManifestError, OSError) as e:
            errors.append(f"{name}@{v}: {e}")
            continue
        if version or manifest.get("precision", FP32) == precision:
            return folder, manifest
    raise FileNotFoundError(f"no valid version of {name!r} in {store}: {'; '.join(errors) or 'none published'}")


def choose_providers(setting: str = "auto") -> list[str]:
    """ONNX Runtime providers for `setting` (auto | cpu | cuda), CUDA first when it is wanted and present."""
    available = ort.get_available_providers()
    if setting == "cpu":
        return list(CPU)
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", *CPU]
    if setting == "cuda":
        raise RuntimeError(f"providers=cuda but onnxruntime offers only {available} "
                           "(install onnxruntime-gpu on a machine with a GPU)")
    return list(CPU)


def open_session(model: str | Path | bytes, *, threads: int = 1, providers: list[str] | tuple[str, ...] = CPU,
                 log_severity: int = 3) -> ort.InferenceSession:
    """A session on an ONNX file or serialized model bytes (a derived graph).

    One inter-op thread; `threads` intra-op threads, which sleep between runs instead of spinning when there are
    several: a spinning pool fights whatever else runs on the machine for the cores (docs/design.md).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = log_severity  # 3: errors only; 4: nothing (a failing run is itself the answer)
    if threads > 1:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=opts,
                                providers=list(providers))


def write_optimized(src: str | Path, dst: str | Path) -> None:
    """ONNX Runtime's basic graph optimisations of `src` (constant folding, BatchNorm folded into Conv/Gemm)
    written to `dst`: what ganserve/store/quantize.py starts from."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), sess_options=opts, providers=list(CPU))
