"""Train, export and publish one model: python -m training.run <config> [--key=value ...]

    python -m training.run gan-mnist                      # training/configs/gan-mnist.toml
    python -m training.run gan-mnist --loss=minimax --steps=200
    python -m training.run gan-mnist --resume             # continue runs/gan-mnist from its last checkpoint
    python -m training.run gan-ring8 --seed=3 --no-publish --out runs/ring-s3
    python -m training.run gan-sc-ring8 --cpu-kernels portable   # the same bytes on any x86-64 CPU

Steps: 1. read the TOML config and the overrides into the family's frozen dataclass (unknown keys and
wrong types are errors), print it and save it as <out>/config.json; 2. train (checkpoints in <out>);
3. export ONNX and check parity; 4. publish a new version into the store (unless --no-publish); a run shortened
below its config file's length (--steps=150) publishes as a CANDIDATE: callable as name@version, never the
default until `python -m ganserve.store promote` (docs/serve_your_own_generator.md#versions).
`--cpu-kernels=portable` pins torch's CPU kernels first (training.kernels), so that the run's bytes do not depend on
the CPU's vector unit; the manifest records the kernels every run used (training.kernels).
`--help` lists every configuration key of every family with its type and default. Relative store paths in a
config (evaluator_store) are read against the project folder, wherever the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from pathlib import Path

from training.config import (
    CONFIG_DIR,
    PROJECT,
    ConfigError,
    build,
    config_path,
    parse_overrides,
    read_toml,
    to_dict,
)
from training.kernels import MODES as KERNEL_MODES
from training.kernels import KernelError, pin
from training.publish import build_manifest, publish_model

# family name in a config file -> module with Config, train(), export(), manifest_fields()
# On --resume only these may differ from the saved config: run length, logging cadence, CPU threads.
RESUME_MAY_CHANGE = {"steps", "epochs", "eval_every", "eval_samples", "threads"}

FAMILIES = {"evaluator": "training.evaluator", "gan": "training.gan", "toy": "training.toy",
            "latent-constraint": "training.latent_constraints"}


def load(config: str, overrides: list[str]):
    """(family module, config) for a config name or path and its --key=value overrides."""
    values = read_toml(config_path(config))
    family = values.pop("family", None)
    if family not in FAMILIES:
        raise ConfigError(f"{config}: 'family' must be one of {sorted(FAMILIES)}, got {family!r}")
    module = importlib.import_module(FAMILIES[family])
    return module, build(module.Config, values, parse_overrides(overrides))


SHORTENED = ("steps", "epochs", "vae_epochs", "ac_steps", "realism_steps")


def smoke_run(config: str, cfg) -> str:
    """Why this run publishes as a CANDIDATE (never the served default until promoted), or '': a run whose
    length overrides cut below its config file's (a smoke run: `--steps=150`)."""
    _, base = load(config, [])
    cut = [f"{k} {getattr(cfg, k)} of {getattr(base, k)}" for k in SHORTENED
           if isinstance(getattr(base, k, None), int) and getattr(cfg, k) < getattr(base, k)]
    return f"smoke run ({', '.join(cut)}); promote it with python -m ganserve.store promote" if cut else ""


def run(config: str, overrides: list[str], out: Path | None = None, store: Path | None = PROJECT / "model_store",
        resume: bool = False, log=print, cpu_kernels: str = "native") -> dict:
    """The whole pipeline; returns {"config", "result", "manifest", "published"}."""
    kernels = pin(cpu_kernels)  # before anything trains: torch reads the pins at its first kernel call
    module, cfg = load(config, overrides)
    out = Path(out or Path("runs") / cfg.name)
    out.mkdir(parents=True, exist_ok=True)
    cfg_dict = to_dict(cfg)
    log(json.dumps(cfg_dict, indent=2))
    saved = out / "config.json"
    if resume and saved.exists():
        # a key the saved run predates counts as its default (an option added since changes nothing)
        defaults = {f.name: f.default for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else {}
        before = {**{k: v for k, v in defaults.items() if k in cfg_dict}, **json.loads(saved.read_text())}
        changed = sorted(k for k in set(before) | set(cfg_dict)
                         if before.get(k) != cfg_dict.get(k) and k not in RESUME_MAY_CHANGE)
        if changed:
            raise ConfigError(f"--resume with a config that differs from {saved} in {', '.join(changed)}; "
                              f"only {', '.join(sorted(RESUME_MAY_CHANGE))} may change on resume")
    saved_kernels = out / "kernels.json"  # other kernels would continue the run with other rounding
    began = json.loads(saved_kernels.read_text())["mode"] if resume and saved_kernels.exists() else cpu_kernels
    if began != cpu_kernels:
        raise ConfigError(f"--resume with --cpu-kernels={cpu_kernels}, but the run began with {began} "
                          f"({saved_kernels})")
    saved.write_text(json.dumps(cfg_dict, indent=2) + "\n")
    saved_kernels.write_text(json.dumps({"mode": cpu_kernels, **kernels}, indent=2) + "\n")

    result = module.train(cfg, out, resume=resume, log=log)
    art = module.export(result, out)
    training = {"config": cfg_dict, "family": module.__name__, "seed": cfg.seed, "steps": result["steps"],
                "wall_time_s": round(result["wall_time_s"], 1), "data": result["data"],
                **result.get("training_extra", {}), "kernels": {"mode": cpu_kernels, **kernels}}
    metrics = {**result["metrics"], **art.get("metrics", {})}
    manifest = build_manifest(cfg.name, {**module.manifest_fields(cfg), **art.get("fields", {})}, art["graphs"],
                              training, metrics, art["export"])
    short = smoke_run(config, cfg)
    if short:  # the server's quality gate would likely stop it too; this says why without judging it
        manifest["candidate"] = short
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    published = None
    if store is not None:
        published = publish_model(store, manifest, art["files"])
        log(f"published {published}")
    return {"config": cfg, "result": result, "manifest": manifest, "published": published}


def keys_help() -> str:
    """Every family's configuration keys with their types and defaults (a config file sets some of them)."""
    lines = [f"configuration keys (--key=value; a config file in {CONFIG_DIR.relative_to(PROJECT)}/ sets its own "
             f"values, the family's defaults fill the rest): "
             + ", ".join(sorted(q.stem for q in CONFIG_DIR.glob('*.toml')))]
    for family, module_name in FAMILIES.items():
        cls = getattr(importlib.import_module(module_name), "Config", None)
        if cls is None:  # a family module without a config of its own
            continue
        lines.append(f"\n  family {family} ({cls.__name__}):")
        lines += [f"    --{f.name}={f.default!r}  ({f.type})" for f in dataclasses.fields(cls)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m training.run", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                # the families import torch (seconds): only when help is asked for
                                epilog=keys_help() if {"-h", "--help"} & set(argv) else None)
    p.add_argument("config", help="config name (training/configs/<name>.toml) or a .toml path")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.safetensors")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<name>)")
    p.add_argument("--store", type=Path, default=PROJECT / "model_store",
                   help="model store to publish into (default: the project's model_store/, wherever you run)")
    p.add_argument("--no-publish", action="store_true", help="train and export only")
    p.add_argument("--cpu-kernels", choices=KERNEL_MODES, default="native",
                   help="native: torch picks kernels for this CPU (fastest); portable: pinned so that the bytes "
                        "do not depend on the CPU's vector unit (docs/training.md#bit-for-bit)")
    args, rest = p.parse_known_args(argv)
    try:
        run(args.config, rest, args.out, None if args.no_publish else args.store, args.resume,
            cpu_kernels=args.cpu_kernels)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except KernelError as e:
        print(f"cpu kernels: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
