"""The model store's manifest: schema, validation, and atomic publication. No torch, no onnxruntime.

Layout (after Triton's model repository):

    model_store/<name>/<version>/manifest.json
                                 generator.onnx        the sampler (kind classifier: classifier.onnx)
                                 encoder.onnx          optional, image -> latent (Invert)
                                 generator_grad.onnx   optional, (z, x[, y]) -> (loss, dloss/dz) (Invert OPTIMIZE);
                                                       usually not stored but derived from generator.onnx at load
                                 critic.onnx           optional, discriminator/critic (critic-based divergences)
                                 samples.png curves.png  previews for people

`<version>` is a positive integer folder name. A version is written under a hidden temporary name in the
model's folder and renamed into place when complete (rename is atomic on POSIX), so a reader never sees a
partial version; a published version is never modified. Every file listed in `files` carries its sha256,
which the server checks before loading.

manifest.json (format 1):
    format        1
    name, version, kind ("gan" | "wgan-gp" | "cgan" | "latent-constraint" | "evaluator"), created (RFC 3339),
    description
    data_kind     "image" | "points"
    latent_dim    int (0 for the evaluator)
    num_classes   int (0 for unconditional generators), class_names [str]
    output        {"shape": [C, H, W] or [D], "value_range": [lo, hi] or null}
    input         optional {"value_range": [lo, hi]}: the range a classifier (evaluator) takes; absent means [0, 1].
                  Code that feeds a classifier checks it (check_input_range): fed [-1, 1], the MNIST evaluator
                  agrees with the labels 29% of the time, with no other sign.
    max_batch_size  int
    latent_code   optional {"dim": i, "edges": [K-1 increasing floats], "values": [K floats]}: coordinate i of z
                  is read as a discrete code (cell k <=> edges[k-1] < z_i <= edges[k]; a self-conditioned
                  generator's cluster); values[k] lies in cell k. Inversion chooses the cell by search and keeps
                  it fixed (the generator has no gradient along z_i).
    graphs        {role: {"file": "generator.onnx",
                          "inputs":  [{"name", "dtype", "dims"}],   dims without the batch axis
                          "outputs": [{"name", "dtype", "dims"}]}}
                  roles: generator (inputs z [latent_dim] then, if conditional, y [num_classes] class
                  probabilities; output x), encoder (x[, y] -> z), generator_grad, critic (x[, y] -> score),
                  classifier (evaluator: x in [0, 1] -> logits [num_classes], features [F])
                  generator_grad may say {"derive": "vjp", "inputs", "outputs"} instead of a file: the loader
                  builds it from the generator graph (ganserve/inversion/grad_graph.py, an ONNX-level vector-Jacobian
                  product; deterministic, ~0.1 s), so the store does not hold the generator's weights twice.
    files         {file name: sha256 hex}
    training      {config, seed, steps, wall_time_s, data {source, sha256}, ...}   free-form
    metrics       {name: number}        free-form scalars; the quality gate judges some (ganserve/store/policy.py)
    candidate     optional str: published as a CANDIDATE with this reason (a smoke run), never the default
                  until promoted (python -m ganserve.store promote)
    precision     optional "fp32" (absent means fp32) | "int8": a reduced-precision variant of version
                  `derived_from` (same name; ganserve/store/quantize.py). "name" and "name@latest" mean fp32
                  versions only; "name@int8" names the variant (ganserve/store/policy.py judges it against its
                  fp32 source, not against the fp32 chain)
    derived_from  the fp32 version a variant was made from (required with a precision other than fp32)
    export        {parity_max_abs_diff: {graph: float}, inprocess_samples_per_s: float, ...}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from ganserve.inversion.grad_graph import GradGraphError, grad_graph_bytes
from ganserve.store.external_data import external_files

FORMAT = 1
KINDS = ("gan", "wgan-gp", "cgan", "latent-constraint", "evaluator")
ROLES = ("generator", "encoder", "generator_grad", "critic", "classifier")
DERIVE_VJP = "vjp"  # graphs.generator_grad.derive: built from the generator at load (ganserve/inversion/grad_graph.py)
DTYPES = ("float32", "uint8", "int64")
FP32 = "fp32"
PRECISIONS = (FP32, "int8")  # what a manifest's `precision` may say; a request names one as "name@int8"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # always with fullmatch: "$" would let "name\n" through


class ManifestError(ValueError):
    """A manifest or version folder that must not be served."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ManifestError(msg)


def _check_spec(spec: Any, where: str) -> None:
    _require(isinstance(spec, dict) and isinstance(spec.get("name"), str), f"{where}: needs a name")
    _require(spec.get("dtype") in DTYPES, f"{where}: dtype must be one of {DTYPES}")
    dims = spec.get("dims")
    _require(isinstance(dims, list) and all(isinstance(d, int) and d > 0 for d in dims),
             f"{where}: dims must be a list of positive ints")


def _check_latent_code(code: Any, latent_dim: int) -> None:
    _require(isinstance(code, dict), "latent_code must be an object")
    dim, edges, values = code.get("dim"), code.get("edges"), code.get("values")
    _require(isinstance(dim, int) and 0 <= dim < latent_dim, f"latent_code.dim must be in 0..{latent_dim - 1}")
    _require(isinstance(edges, list) and isinstance(values, list) and len(values) == len(edges) + 1 >= 2
             and all(isinstance(v, (int, float)) for v in [*edges, *values]),
             "latent_code needs edges (K-1 numbers) and values (K numbers), K >= 2")
    _require(all(a < b for a, b in zip(edges, edges[1:])), "latent_code.edges must be strictly increasing")
    bounds = [float("-inf"), *edges, float("inf")]
    _require(all(bounds[k] < v <= bounds[k + 1] for k, v in enumerate(values)),
             "latent_code.values[k] must lie in cell k (edges[k-1] < value <= edges[k])")


def validate(manifest: dict[str, Any]) -> dict[str, Any]:
    """Check a manifest's structure (not the files); return it. Raises ManifestError with the reason."""
    m = manifest
    _require(isinstance(m, dict), "manifest must be a JSON object")
    _require(m.get("format") == FORMAT, f"format must be {FORMAT}, got {m.get('format')!r}")
    _require(isinstance(m.get("name"), str) and bool(NAME_RE.fullmatch(m["name"])),
             f"name must match {NAME_RE.pattern}, got {m.get('name')!r}")
    _require(isinstance(m.get("version"), int) and m["version"] > 0, "version must be a positive int")
    _require(m.get("kind") in KINDS, f"kind must be one of {KINDS}, got {m.get('kind')!r}")
    _require(m.get("data_kind") in ("image", "points"), "data_kind must be 'image' or 'points'")
    _require(isinstance(m.get("latent_dim"), int) and m["latent_dim"] >= 0, "latent_dim must be an int >= 0")
    _require(isinstance(m.get("num_classes"), int) and m["num_classes"] >= 0, "num_classes must be an int >= 0")
    names = m.get("class_names", [])
    _require(isinstance(names, list) and len(names) == m["num_classes"],
             "class_names must have num_classes entries")
    out = m.get("output")
    _require(isinstance(out, dict) and isinstance(out.get("shape"), list) and out["shape"]
             and all(isinstance(d, int) and d > 0 for d in out["shape"]), "output.shape must be positive ints")
    vr = out.get("value_range")
    _require(vr is None or (isinstance(vr, list) and len(vr) == 2 and vr[0] < vr[1]),
             "output.value_range must be null or [lo, hi] with lo < hi")
    _require(isinstance(m.get("max_batch_size"), int) and m["max_batch_size"] > 0, "max_batch_size must be > 0")
    if "input" in m:
        ivr = m["input"].get("value_range") if isinstance(m["input"], dict) else None
        _require(isinstance(ivr, list) and len(ivr) == 2 and all(isinstance(v, (int, float)) for v in ivr)
                 and ivr[0] < ivr[1], "input.value_range must be [lo, hi] with lo < hi")
    precision = m.get("precision", FP32)
    _require(precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != FP32:
        src = m.get("derived_from")
        _require(isinstance(src, int) and not isinstance(src, bool) and 0 < src,
                 f"a {precision} variant needs derived_from: the fp32 version it was made from")
    if "latent_code" in m:
        _check_latent_code(m["latent_code"], m["latent_dim"])
    graphs, files = m.get("graphs"), m.get("files")
    _require(isinstance(graphs, dict) and graphs, "graphs must name at least one graph")
    _require(isinstance(files, dict), "files must map file names to sha256")
    main_role = "classifier" if m["kind"] == "evaluator" else "generator"
    _require(main_role in graphs, f"kind {m['kind']} needs a {main_role} graph")
    for role, g in graphs.items():
        _require(role in ROLES, f"unknown graph role {role!r}; known: {ROLES}")
        _require(isinstance(g, dict), f"graphs.{role} must be an object")
        if "derive" in g:
            _require(role == "generator_grad" and g["derive"] == DERIVE_VJP and "file" not in g,
                     f"graphs.{role}.derive: only generator_grad may be derived, as {DERIVE_VJP!r}, without a file")
            _require("generator" in graphs, f"graphs.{role} is derived from the generator graph, which is missing")
        else:
            _require(isinstance(g.get("file"), str), f"graphs.{role}.file missing")
            _require(g["file"] in files, f"graphs.{role}.file {g['file']} is not listed in files")
        for i, spec in enumerate(g.get("inputs", [])):
            _check_spec(spec, f"graphs.{role}.inputs[{i}]")
        for i, spec in enumerate(g.get("outputs", [])):
            _check_spec(spec, f"graphs.{role}.outputs[{i}]")
        _require(g.get("inputs") and g.get("outputs"), f"graphs.{role} needs inputs and outputs")
    for name, digest in files.items():
        _require("/" not in name and "\\" not in name and name not in (".", "..") and not name.startswith("."),
                 f"file name {name!r} must be a plain name inside the version folder")
        _require(isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) is not None,
                 f"files.{name} must be a sha256 hex digest")
    return m


def precision(manifest: dict[str, Any]) -> str:
    """The manifest's precision word ("fp32" when it says none)."""
    return manifest.get("precision", FP32)


def read_manifest(version_dir: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((version_dir / "manifest.json").read_text())
    except FileNotFoundError as e:
        raise ManifestError(f"{version_dir}: no manifest.json") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{version_dir}/manifest.json: not valid JSON ({e})") from e
    validate(manifest)
    _require(manifest["name"] == version_dir.parent.name and str(manifest["version"]) == version_dir.name,
             f"{version_dir}: manifest says {manifest['name']}@{manifest['version']}, folder says "
             f"{version_dir.parent.name}@{version_dir.name}")
    return manifest


def verify_files(version_dir: Path, manifest: dict[str, Any]) -> None:
    """Check that every listed file exists and matches its sha256, and that the graphs read no other file: an
    external-data reference must name a file listed in the manifest (ganserve/store/external_data.py)."""
    for name, digest in manifest["files"].items():
        path = version_dir / name
        _require(path.is_file() and not path.is_symlink(), f"{version_dir}: missing file {name}")
        actual = sha256_file(path)
        _require(actual == digest, f"{version_dir}/{name}: sha256 {actual[:12]}... != manifest {digest[:12]}...")
    for graph in {g["file"] for g in manifest["graphs"].values() if "file" in g}:
        try:
            locations = external_files(version_dir / graph)
        except Exception:  # noqa: BLE001, S112 - not a model onnx can read: ONNX Runtime refuses it, with its reason
            continue
        for location in locations:
            _require(location in manifest["files"] and location != graph,
                     f"{version_dir}/{graph}: external data {location[:80]!r} is not a file listed (with its sha256) "
                     "in the manifest; refused")


def graph_model(version_dir: Path, manifest: dict[str, Any], role: str) -> str | bytes:
    """What ONNX Runtime should load for `role`: the file's path, or the bytes of a derived graph.

    A derived generator_grad is rebuilt from the (sha256-checked) generator file by ganserve.inversion.grad_graph, the
    same code that built and finite-difference-checked it at publish time (onnx and numpy only, no torch).
    Raises ManifestError if the generator cannot be differentiated.
    """
    graph = manifest["graphs"][role]
    if "derive" not in graph:
        return str(Path(version_dir) / graph["file"])
    source = Path(version_dir) / manifest["graphs"]["generator"]["file"]
    try:
        return grad_graph_bytes(source)
    except (GradGraphError, onnx.checker.ValidationError, ValueError) as e:
        raise ManifestError(f"{version_dir}: cannot derive generator_grad from {source.name} ({e})") from e


def generator_names(manifest: dict[str, Any]) -> tuple[str, str | None, str]:
    """The generator graph's latent input, class input (None when unconditional) and sample output names."""
    graph = manifest["graphs"]["generator"]
    inputs = [s["name"] for s in graph["inputs"]]
    return inputs[0], inputs[1] if len(inputs) > 1 else None, graph["outputs"][0]["name"]


def next_version(store: Path, name: str) -> int:
    folder = store / name
    versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return max(versions, default=0) + 1


def publish(store: Path, manifest: dict[str, Any], files: dict[str, Path], *, version: int | None = None) -> Path:
    """Publish a new version atomically: copy files, write their sha256 into the manifest, rename into place.

    `files` maps the file name inside the version folder to its current path. Returns the version folder.
    An interruption at any point leaves at most a hidden `.tmp-*` folder, which the server ignores.
    """
    store = Path(store)
    name = manifest["name"]
    _require(bool(NAME_RE.fullmatch(name)), f"invalid model name {name!r}")
    (store / name).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=store / name))
    try:
        digests = {}
        for fname, src in files.items():
            shutil.copyfile(src, tmp / fname)
            digests[fname] = sha256_file(tmp / fname)
        for _ in range(100):  # another publisher may take the number first: retry with the next one
            v = version or next_version(store, name)
            m = dict(manifest, version=v, files=digests, format=FORMAT)
            validate(m)
            (tmp / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=False) + "\n")
            for p in [*tmp.iterdir(), tmp]:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            final = store / name / str(v)
            try:
                os.rename(tmp, final)  # atomic; fails if `final` exists and is not empty
            except OSError:
                if version is not None:
                    raise
                continue
            os.chmod(final, 0o755)
            return final
        raise ManifestError(f"could not find a free version number for {name}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


CLASSIFIER_INPUT_RANGE = (0.0, 1.0)  # what an evaluator manifest without "input" takes


def input_range(manifest: dict[str, Any]) -> tuple[float, float]:
    """The value range a classifier's input must lie in: the manifest's input.value_range, else [0, 1]."""
    vr = (manifest.get("input") or {}).get("value_range")
    return (float(vr[0]), float(vr[1])) if vr else CLASSIFIER_INPUT_RANGE


def check_input_range(manifest: dict[str, Any], x, tolerance: float = 1e-3) -> None:
    """ValueError when `x` (a numpy array) leaves the classifier's input range: the caller mapped it wrongly."""
    lo, hi = input_range(manifest)
    if x.size and (float(x.min()) < lo - tolerance or float(x.max()) > hi + tolerance):
        raise ValueError(f"{manifest['name']}@{manifest['version']} takes inputs in [{lo:g}, {hi:g}] (its manifest's "
                         f"input.value_range), got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]: map the "
                         f"images there first (from [-1, 1]: (x + 1) / 2)")
