"""Publish a generator into the model store, ours or one trained elsewhere: `python -m training.publish`.

    python -m training.publish --onnx G.onnx --name my-gan --kind gan --latent-dim 64 \\
        --data-shape 1,28,28 --value-range -1,1 [--store model_store] [--evaluate]
    python -m training.publish --config my-gan.toml [--flag value ...]    # the same keys in a TOML file

No torch is needed for an existing .onnx file. Steps:
1. read the generator (and the optional encoder and critic) and map its inputs/outputs to the store's names
   (z, then y for conditional kinds; x) - `inputs`/`output` name the graph's own when they differ;
2. feed it the latents the server draws (z ~ N(0, 1)): a generator trained on uniform latents gets a transform
   in front (ganserve.store.onnx_edit.latent_transform);
3. a batch axis exported as a constant is made dynamic when the graph allows, checked row by row; else refused
   with the export flags that fix it;
4. write the manifest, then load the version exactly as the server does (ganserve.store.check.open_version:
   sha256, sessions, names/dtypes/dims, a probe at several batch sizes with finite outputs in the declared range);
5. derive the gradient graph for Invert OPTIMIZE when the builder supports the graph's ops (else say why);
6. with --evaluate, judge it with the store's evaluator on its reference data and record the figures (the
   server's quality gate compares them with the serving version's);
7. publish atomically - or print one line per problem and publish nothing (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import re
import sys
import tempfile
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ganserve.conditions import CONDITIONAL_KINDS
from ganserve.inversion.grad_graph import GradGraphError, grad_graph_bytes
from ganserve.store import check, onnx_edit
from ganserve.store import manifest as mf
from ganserve.store.policy import TOLERANCES
from training import evaluate as ev

GENERATOR_KINDS = ("gan", "wgan-gp", *CONDITIONAL_KINDS)
EXPORT_FIX = ("re-export with torch.onnx.export(G, (z,), 'G.onnx', dynamo=False, input_names=['z'], "
              "output_names=['x'], dynamic_axes={'z': {0: 'N'}, 'x': {0: 'N'}})")


def build_manifest(name: str, fields: dict[str, Any], graphs: dict, training: dict, metrics: dict,
                   export: dict) -> dict[str, Any]:
    """Assemble a format-1 manifest; `fields` holds kind, data_kind, latent_dim, classes, output, ..."""
    return {"format": 1, "name": name, "version": 1,  # the version is assigned by publish()
            "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            **fields, "graphs": graphs, "files": {}, "training": training,
            "metrics": {k: v for k, v in metrics.items()}, "export": export}


def publish_model(store: Path, manifest: dict[str, Any], files: dict[str, Path]) -> Path:
    """Copy `files` (+ the manifest with their sha256) into store/<name>/<next version>/ atomically."""
    missing = [f for f in files.values() if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot publish {manifest['name']}: missing {missing}")
    return mf.publish(Path(store), manifest, {k: Path(v) for k, v in files.items()})


@dataclass(frozen=True)
class Settings:
    """What `python -m training.publish` takes (flags or TOML keys of the same names)."""

    onnx: str = ""                  # the generator graph
    name: str = ""                  # model name in the store
    kind: str = "gan"               # gan | wgan-gp | cgan | latent-constraint
    latent_dim: int = 0
    latent_distribution: str = "normal"  # what it was trained on: normal | uniform (-1, 1) | uniform01 (0, 1)
    data_shape: tuple[int, ...] = ()     # one sample: C,H,W for images, D for points
    value_range: tuple[float, ...] = ()  # lo,hi of the samples (required for images)
    classes: int = 0                # conditional kinds: number of classes
    class_names: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()    # the graph's names for z[, y] when they are not its first inputs
    output: str = ""                # the graph's name for x when it is not its first output
    encoder: str = ""               # optional encoder graph x[, y] -> z (Invert ENCODER/HYBRID)
    critic: str = ""                # optional discriminator/critic x[, y] -> score
    description: str = ""
    max_batch_size: int = 4096
    evaluate: bool = False          # judge it with the store's evaluator before publishing
    reference: str = ""             # reference data for --evaluate: mnist (default for 1x28x28) | ring8 | grid25
    eval_n: int = 0                 # samples for --evaluate; 0 = training.evaluate's protocol (10,000 images, 2,500
                                    # points), the n the shipped figures use: the gate compares like with like
    candidate: str = ""             # publish as a CANDIDATE with this reason (never the default until promoted)
    store: str = "model_store"
    dry_run: bool = False           # check everything, publish nothing


class Refused(Exception):
    """One or more problems, one line each; nothing was published."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _feeds(s: Settings, names: list[str]):
    def make(n: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(n)
        feeds = {names[0]: rng.standard_normal((n, s.latent_dim)).astype(np.float32)}
        if len(names) > 1:
            feeds[names[1]] = np.eye(s.classes, dtype=np.float32)[np.arange(n) % s.classes]
        return feeds
    return make


def _check_settings(s: Settings) -> list[str]:
    problems = []
    if not s.onnx:
        problems.append("onnx: name the generator graph (--onnx G.onnx)")
    if not mf.NAME_RE.match(s.name or ""):
        problems.append(f"name: must match {mf.NAME_RE.pattern}, got {s.name!r}")
    if s.kind not in GENERATOR_KINDS:
        problems.append(f"kind: must be one of {GENERATOR_KINDS}, got {s.kind!r}")
    if s.latent_dim <= 0:
        problems.append("latent_dim: must be > 0 (--latent-dim)")
    if s.latent_distribution not in onnx_edit.LATENT_DISTRIBUTIONS:
        problems.append(f"latent_distribution: must be one of {onnx_edit.LATENT_DISTRIBUTIONS}")
    if len(s.data_shape) not in (1, 3) or min(s.data_shape, default=0) <= 0:
        problems.append(f"data_shape: C,H,W for images or D for points, got {list(s.data_shape)}")
    if len(s.data_shape) == 3 and len(s.value_range) != 2:
        problems.append("value_range: images need lo,hi (e.g. --value-range -1,1)")
    if s.value_range and (len(s.value_range) != 2 or not s.value_range[0] < s.value_range[1]):
        problems.append(f"value_range: lo,hi with lo < hi, got {list(s.value_range)}")
    if (s.kind in CONDITIONAL_KINDS) != (s.classes > 0):
        problems.append(f"classes: kind {s.kind} needs " + ("--classes K" if s.kind in CONDITIONAL_KINDS else "none"))
    if s.class_names and len(s.class_names) != s.classes:
        problems.append(f"class_names: {len(s.class_names)} names for {s.classes} classes")
    return problems


def _generator(s: Settings, work: Path, log) -> tuple[Path, list[str]]:
    """The generator with the store's names, the server's latents and a dynamic batch axis; its problems."""
    try:
        model = onnx.load(s.onnx)
    except Exception as e:  # noqa: BLE001 - a missing or corrupt file: the reason is what matters
        return work / "generator.onnx", [f"onnx: cannot read {s.onnx} ({str(e).splitlines()[0][:200]})"]
    graph_inputs = [i.name for i in onnx_edit._inputs(model)]
    graph_outputs = [o.name for o in model.graph.output]
    want = 2 if s.kind in CONDITIONAL_KINDS else 1
    inputs = list(s.inputs) or graph_inputs[:want]
    output = s.output or (graph_outputs[0] if graph_outputs else "")
    problems = [f"inputs: {n!r} is not an input of {s.onnx} (its inputs: {graph_inputs})"
                for n in inputs if n not in graph_inputs]
    if output not in graph_outputs:
        problems.append(f"output: {output!r} is not an output of {s.onnx} (its outputs: {graph_outputs})")
    if len(inputs) != want or len(graph_inputs) != want:
        problems.append(f"inputs: kind {s.kind} takes {' and '.join(['z', 'y'][:want])}; {s.onnx} has inputs "
                        f"{graph_inputs}" + (" (name them with --inputs)" if len(graph_inputs) > want else ""))
    if problems:
        return work / "generator.onnx", problems
    store_names = ["z", "y"][:want]
    model = onnx_edit.rename_io(model, {**dict(zip(inputs, store_names)), output: "x"})
    wanted = {"z": [s.latent_dim], "y": [s.classes], "x": list(s.data_shape)}
    for vi in [*onnx_edit._inputs(model), *model.graph.output]:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim][1:]
        flag = {"z": "--latent-dim", "y": "--classes", "x": "--data-shape"}.get(vi.name)
        if flag and t.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f"{vi.name}: must be float32, the graph's is {onnx.TensorProto.DataType.Name(t.elem_type)}")
        elif flag and t.HasField("shape") and (len(dims) != len(wanted[vi.name]) or any(
                d is not None and d != w for d, w in zip(dims, wanted[vi.name]))):
            original = {"z": inputs[0], "y": inputs[-1], "x": output}[vi.name]
            problems.append(f"{original}: the graph's dims (without the batch axis) are {dims}, {flag} says "
                            f"{wanted[vi.name]}")
    if problems:
        return work / "generator.onnx", problems
    model = onnx_edit.latent_transform(model, "z", s.latent_distribution)
    if s.latent_distribution != "normal":
        log(f"latents: the server draws z ~ N(0, 1); prepended z -> {s.latent_distribution} (erf)")
    fixed = onnx_edit.fixed_batch(model)
    if fixed or not onnx_edit.runs_batched(model, _feeds(s, store_names)):
        where = f"declared {fixed}" if fixed else "inside the graph"
        try:
            model = onnx_edit.dynamic_batch(model, _feeds(s, store_names))
            log(f"batch axis: fixed in the export ({where}); made dynamic and checked row by row against the original")
        except ValueError as e:
            problems.append(f"batch axis: fixed in the export ({where}) and {e}; {EXPORT_FIX}")
    path = work / "generator.onnx"
    onnx.save(model, str(path))
    return path, problems


def _extra(s: Settings, role: str, path: str, work: Path) -> tuple[dict | None, str]:
    """The encoder's or critic's graph spec (its own names), or the problem."""
    try:
        spec = check.graph_spec(Path(path))
    except Exception as e:  # noqa: BLE001 - the reason is what matters
        return None, f"{role}: cannot load {path} ({str(e).splitlines()[0][:200]})"
    if spec["inputs"][0]["dims"] != list(s.data_shape):
        return None, f"{role}: its first input takes {spec['inputs'][0]['dims']}, the samples are {list(s.data_shape)}"
    (work / f"{role}.onnx").write_bytes(Path(path).read_bytes())
    return dict(spec, file=f"{role}.onnx"), ""


def prepare(s: Settings, work: Path, log=print) -> tuple[dict[str, Any], dict[str, Path]]:
    """Steps 1-5 of the module docstring in `work`: (manifest, files) ready to publish; Refused otherwise."""
    problems = _check_settings(s)
    if problems:
        raise Refused(problems)
    gen_path, problems = _generator(s, work, log)
    conditional = s.kind in CONDITIONAL_KINDS
    zy = [{"name": "z", "dtype": "float32", "dims": [s.latent_dim]}]
    zy += [{"name": "y", "dtype": "float32", "dims": [s.classes]}] if conditional else []
    graphs: dict[str, Any] = {"generator": {"file": "generator.onnx", "inputs": zy,
                                            "outputs": [{"name": "x", "dtype": "float32", "dims": list(s.data_shape)}]}}
    files = {"generator.onnx": gen_path}
    for role, path in (("encoder", s.encoder), ("critic", s.critic)):
        if path:
            spec, problem = _extra(s, role, path, work)
            problems += [problem] if problem else []
            if spec:
                graphs[role], files[f"{role}.onnx"] = spec, work / f"{role}.onnx"
    if problems:
        raise Refused(problems)
    try:
        grad_graph_bytes(gen_path)
        graphs["generator_grad"] = {"derive": mf.DERIVE_VJP, "inputs": [*zy, {"name": "target", "dtype": "float32",
                                    "dims": list(s.data_shape)}],  # the builder appends target to G's inputs
                                    "outputs": [{"name": "loss", "dtype": "float32", "dims": []},
                                                {"name": "grad_z", "dtype": "float32", "dims": [s.latent_dim]}]}
        log("gradient graph: derived at load from the generator (Invert OPTIMIZE and HYBRID)")
    except (GradGraphError, ValueError, onnx.checker.ValidationError) as e:
        log(f"gradient graph: not derivable ({str(e).splitlines()[0][:200]}); Invert OPTIMIZE unavailable")
    fields = {"kind": s.kind, "data_kind": "image" if len(s.data_shape) == 3 else "points",
              "latent_dim": s.latent_dim, "num_classes": s.classes,
              "class_names": list(s.class_names) or [str(i) for i in range(s.classes)],
              "output": {"shape": list(s.data_shape), "value_range": list(s.value_range) or None},
              "max_batch_size": s.max_batch_size,
              "description": s.description or f"{s.kind} generator published from {Path(s.onnx).name}"}
    training = {"source": str(s.onnx), "latent_distribution": s.latent_distribution, "published_by": "training.publish"}
    if s.reference:
        training["config"] = {"data": s.reference}
    manifest = build_manifest(s.name, fields, graphs, training, {}, {})
    if s.candidate:
        manifest["candidate"] = s.candidate
    return manifest, files


def _stage(manifest: dict[str, Any], files: dict[str, Path], work: Path) -> Path:
    """Publish into a scratch store and load it as the server would; Refused with the loader's reason."""
    try:
        staged = mf.publish(work / "staging", manifest, files, version=1)
        check.open_version(staged)
    except mf.ManifestError as e:
        raise Refused([str(e).replace(str(work / "staging") + "/", "")]) from e
    return staged


def _evaluate(s: Settings, staged: Path, log) -> tuple[dict[str, Any], dict[str, Any]]:
    if s.data_shape == (1, 28, 28) and tuple(s.value_range) != (-1.0, 1.0):
        raise Refused([f"evaluate: the MNIST evaluator reads samples in [-1, 1]; this model's are {list(s.value_range)}"])
    try:
        result = ev.evaluate_model(staged, Path(s.store), n=s.eval_n or None, inversion=False)
    except (ValueError, FileNotFoundError, mf.ManifestError) as e:
        raise Refused([f"evaluate: {e}"]) from e
    figures = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k not in ("n", "seed")}
    log(f"evaluation (n = {result['n']}): " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if k in TOLERANCES))
    return figures, {"n": result["n"], "seed": result["seed"], "evaluator": result.get("evaluator", ""),
                     "reference": s.reference or "mnist"}


def publish(s: Settings, log=print) -> Path | None:
    """Check, optionally evaluate, and publish `s`; the published version folder (None for a dry run)."""
    with tempfile.TemporaryDirectory(prefix="ganserve-publish-") as tmp:
        work = Path(tmp)
        manifest, files = prepare(s, work, log)
        staged = _stage(manifest, files, work)
        log(f"checked as the server loads it: {', '.join(sorted(manifest['graphs']))}")
        if s.evaluate:
            manifest["metrics"], manifest["training"]["evaluation"] = _evaluate(s, staged, log)
        if s.dry_run:
            log("dry run: nothing published")
            return None
        return publish_model(Path(s.store), manifest, files)


# -- command line --------------------------------------------------------------------------------------

def _parse(field: dataclasses.Field, raw: Any) -> Any:
    kind = str(field.type)
    if isinstance(raw, str) and kind.startswith("tuple"):
        raw = [p.strip() for p in raw.split(",") if p.strip()]
    if kind.startswith("tuple[int"):
        return tuple(int(v) for v in raw)
    if kind.startswith("tuple[float"):
        return tuple(float(v) for v in raw)
    if kind.startswith("tuple[str"):
        return tuple(str(v) for v in raw)
    if kind == "int":
        return int(raw)
    if kind == "bool":
        return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
    return str(raw)


def settings(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m training.publish", description=__doc__.split("\n")[0],
                                epilog="docs/serve_your_own_generator.md")
    p.add_argument("--config", help="a TOML file with the keys below (flags override it)")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action="store_const", const=True, default=None)
        else:
            p.add_argument(flag, default=None, help="comma-separated" if str(f.type).startswith("tuple") else None)
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv[:-1]):  # "--value-range -1,1": argparse would take -1,1 for an option
        if a.startswith("--") and "=" not in a and re.fullmatch(r"-[\d.]+(,.*)?", argv[i + 1]):
            argv[i:i + 2] = [f"{a}={argv[i + 1]}", ""]
    args = vars(p.parse_args([a for a in argv if a]))
    values: dict[str, Any] = {}
    config = args.pop("config")
    if config:
        try:
            data = tomllib.loads(Path(config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise Refused([f"config: cannot read {config} ({e})"]) from e
        unknown = set(data) - {f.name for f in fields(Settings)}
        if unknown:
            raise Refused([f"config: {config} has unknown keys {sorted(unknown)}"])
        values.update(data)
    values.update({k: v for k, v in args.items() if v is not None})
    by_name = {f.name: f for f in fields(Settings)}
    try:
        return Settings(**{k: _parse(by_name[k], v) for k, v in values.items()})
    except (TypeError, ValueError) as e:
        raise Refused([f"settings: {e}"]) from e


def main(argv: list[str] | None = None) -> int:
    try:
        s = settings(argv)
        path = publish(s)
    except Refused as e:
        for problem in e.problems:
            print(f"refused: {problem}", file=sys.stderr)
        print("nothing was published", file=sys.stderr)
        return 2
    if path is not None:
        print(f"published {path}")
        print(f"serve it:  python -m server --store {s.store}")
        print(f"call it:   python -m sdk sample --model {s.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
