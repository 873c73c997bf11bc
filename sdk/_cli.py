"""`python -m sdk`: sample, interpolate, invert, evaluate, models. Readable tables (or --json), images as PNG
grids, arrays as .npy/.npz written chunk by chunk, and a one-line message with a non-zero exit on any error (2 for
bad usage, 1 for a failed call)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sdk import _constants as C
from sdk._client import Client
from sdk._errors import GanserveError
from sdk._images import require_pillow, save_grid
from sdk._plot import num, plot
from sdk._progress import progress

ARRAY_SUFFIXES = (".npy", ".npz")


class UsageError(ValueError):
    """A command line that cannot work (exit 2, like argparse's own refusals)."""


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def _save(images, out: Path, value_range, nrow=None) -> None:
    if out.suffix == ".npy":
        np.save(out, np.asarray(images))
    else:
        save_grid(images, out, nrow=nrow, value_range=value_range or (-1.0, 1.0), scale=2)


def _value_range(client: Client, model_ref: str):
    return client.get_model(model_ref).value_range


def _write_chunks(out: Path, n: int, chunks: Iterator, bar) -> tuple[str, int]:
    """Stream samples into out (.npy, or .npz holding samples.npy) chunk by chunk: memory stays one chunk.
    Written under a temporary name and renamed when complete. Returns (model, seed)."""
    first = next(chunks)
    header = {"descr": np.lib.format.dtype_to_descr(first.images.dtype), "fortran_order": False,
              "shape": (n, *first.images.shape[1:])}
    tmp = out.with_name(f".{out.name}.tmp")

    def body(f) -> None:
        np.lib.format.write_array_header_2_0(f, header)
        for chunk in _chain(first, chunks):
            f.write(np.ascontiguousarray(chunk.images).tobytes())
            bar.update(len(chunk.images))

    if out.suffix == ".npz":
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf, zf.open("samples.npy", "w", force_zip64=True) as f:
            body(f)
    else:
        with open(tmp, "wb") as f:
            body(f)
    os.replace(tmp, out)
    return first.model, first.seed


def _chain(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def cmd_sample(c: Client, a) -> str:
    if a.out.suffix not in (".png", *ARRAY_SUFFIXES):
        raise UsageError(f"--out must end in .png (a grid of images), .npy or .npz (arrays), got {a.out.name}")
    info = c.get_model(a.model) if a.model else None
    if info is not None and info.data_kind != "image" and a.out.suffix == ".png":
        raise UsageError(f"{info.ref} returns {info.data_kind} {info.output_shape}, not images: use --out "
                         f"{a.out.with_suffix('.npz').name} (or .npy)")
    what = f"label {a.label}" if a.label is not None else (f"labels {a.labels}" if a.labels else "unconditional")
    if a.out.suffix in ARRAY_SUFFIXES:  # any n, streamed to the file
        chunks = c.stream(a.n, a.label, a.labels, None, a.seed, a.model, truncation=a.truncation,
                          timeout=a.timeout or max(C.DEFAULT_TIMEOUT_S, a.n * C.STREAM_S_PER_SAMPLE))
        with progress(a.n, "samples", disable=a.n <= C.MAX_SAMPLES or not sys.stderr.isatty()) as bar:
            model, seed = _write_chunks(a.out, a.n, chunks, bar)
        return f"wrote {a.out}: {a.n} samples from {model} ({what}, seed {seed})"
    r = c.sample_result(a.n, a.label, a.labels, None, a.seed, a.model, truncation=a.truncation)
    info = info or c.get_model(r.model)
    if info.data_kind != "image":
        raise UsageError(f"{info.ref} returns {info.data_kind} {info.output_shape}, not images: use --out "
                         f"{a.out.with_suffix('.npz').name} (or .npy)")
    _save(r.images, a.out, info.value_range, a.nrow)
    return f"wrote {a.out}: {len(r.images)} samples from {r.model} ({what}, seed {r.seed})"


def cmd_interpolate(c: Client, a) -> str:
    r = c.interpolate(*a.seeds, labels=a.labels, steps=a.steps, method=a.method, model=a.model)
    _save(r.images, a.out, _value_range(c, r.model), nrow=a.steps)
    return f"wrote {a.out}: {len(r.images)} points from {r.model} through seeds {a.seeds} ({a.method})"


def _load_images(paths: list[Path]) -> np.ndarray:
    out = []
    for p in paths:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            out += list(arr if arr.ndim == 4 else arr[None])
        else:
            from PIL import Image  # Pillow is the thin SDK's optional extra (images); only image files need it

            img = np.array(Image.open(p).convert("L"), dtype=np.uint8)
            out.append(img[None])
    return np.stack(out)


def cmd_invert(c: Client, a) -> str:
    images = _load_images(a.images)
    r = c.invert(images, a.label, method=a.method, steps=a.steps, model=a.model)
    rows = [[str(p), f"{m:.5f}"] for p, m in zip(a.images if len(a.images) == len(r.mse) else range(len(r.mse)), r.mse)]
    if a.out:
        _save(r.reconstructions, a.out, _value_range(c, r.model))
    text = _table(rows, ["image", "mse [0,1]"])
    return (f"{text}\n{r.model}: method {r.method}, {r.steps} steps"
            + (f"; reconstructions in {a.out}" if a.out else ""))


def _eval_rows(ev) -> list[list[str]]:
    return [[d.metric, num(d.value), f"[{num(d.ci_low)}, {num(d.ci_high)}]", d.unit, f"{d.n_p}/{d.n_q}",
             ("lower bound; " if d.lower_bound else "") + d.estimator] for d in ev.results]


def _why(d) -> str:
    """The part of a result's note that explains an infinite value or a lower bound."""
    parts = d.note.split("; ")
    return next((x for x in parts if x.startswith(("+inf", "variational lower bound"))), parts[0])


def cmd_evaluate(c: Client, a) -> str:
    qs = a.compare or [a.q]
    if not qs or qs == [None]:
        raise SystemExit("error: give --model MODEL (or --compare A B)")
    evals = [c.evaluate(a.p, q, a.metrics or (), n=a.n, seed=a.seed, bootstrap=a.bootstrap, q_labels=a.labels)
             for q in qs]
    if len(evals) == 1:
        ev = evals[0]
        text = f"P = {ev.p}\nQ = {ev.q}\nseed {ev.seed}\n\n" + _table(
            _eval_rows(ev), ["metric", "value", f"{int(round(100 * ev.results[0].confidence)) if ev.results else 95}% CI",
                             "unit", "n P/Q", "estimator"])
    else:
        # the default metric set can differ per model (each model's own critic bound): rows are the union
        metrics = {d.metric: d.unit for ev in evals for d in ev.results}
        cell = lambda ev, m: (f"{num(ev[m].value)} [{num(ev[m].ci_low)}, {num(ev[m].ci_high)}]"  # noqa: E731
                              if m in ev.by_metric else "-")
        header = ["metric", "unit"] + [ev.q for ev in evals]
        rows = [[m, unit] + [cell(ev, m) for ev in evals] for m, unit in metrics.items()]
        text = f"P = {evals[0].p}, seed {evals[0].seed}\n\n" + _table(rows, header)
    notes = dict.fromkeys(f"{d.metric}: {_why(d)}" for ev in evals for d in ev.results
                          if not math.isfinite(d.value) or d.lower_bound)
    if notes:
        text += "\n\n" + "\n".join(notes)
    if a.plot:
        what = plot(c, a, evals, a.plot)
        text += f"\nplot: {a.plot} ({what})"
    return text


def cmd_models(c: Client, a) -> str:
    models = c.list_models(all_versions=a.all, index=a.index)
    if a.json:
        return json.dumps([dataclasses.asdict(m) for m in models], indent=2)
    rows = []
    for m in models:
        caps = [k for k in ("conditional", "soft_labels", "invertible", "optimizable", "has_critic") if getattr(m, k)]
        rows.append([m.name, str(m.version), m.kind, m.data_kind, "x".join(map(str, m.output_shape)), str(m.latent_dim),
                     str(m.num_classes), ",".join(caps) or "-", ",".join(map(str, m.available_versions)),
                     m.state + ("*" if m.is_default else "") + (f" ({m.state_reason})" if m.state_reason else "")])
    if not rows:
        return "no models served"
    return _table(rows, ["name", "version", "kind", "data", "shape", "latent", "classes", "capabilities", "versions",
                         "state"])


def add_connection_args(p: argparse.ArgumentParser, timeout: float | None = None) -> None:
    """--target, --timeout and the TLS/token settings, shared by `python -m sdk` and `python -m sdk.batch`."""
    g = p.add_argument_group("connection")
    g.add_argument("--target", help="host:port (default: $GANSERVE_TARGET, else localhost:50051)")
    g.add_argument("--timeout", type=float, default=timeout, help="seconds per call" + (
        f" (default {timeout:g})" if timeout else f" (default {C.DEFAULT_TIMEOUT_S:g}; streams: longer for large n)"))
    g.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    g.add_argument("--root-certs", type=Path, metavar="PEM", help="CA certificate(s) to trust (implies --tls)")
    g.add_argument("--client-cert", type=Path, metavar="PEM", help="client certificate for mutual TLS")
    g.add_argument("--client-key", type=Path, metavar="PEM", help="client private key for mutual TLS")
    g.add_argument("--token", help="bearer token (default: $GANSERVE_TOKEN)")


def connect(a) -> Client:
    if bool(a.client_cert) != bool(a.client_key):
        raise UsageError("--client-cert and --client-key go together")
    return Client(a.target, timeout=a.timeout, tls=a.tls, root_certificates=a.root_certs,
                  client_cert=a.client_cert, client_key=a.client_key, token=a.token)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sdk", description="ganserve command line")
    add_connection_args(p)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="draw samples and save them as a PNG grid, .npy or .npz",
                       description="Draw samples. .png: a grid (image models); .npy/.npz: the array, any n, streamed "
                                   "to the file chunk by chunk (memory stays one chunk).")
    s.add_argument("--n", type=int, default=16, help="number of samples (default 16; any n for .npy/.npz)")
    s.add_argument("--label", type=int, help="one class for all samples (conditional models)")
    s.add_argument("--labels", type=int, nargs="+", help="one class per sample (give n of them)")
    s.add_argument("--seed", type=int, help="0..2**64-1; the same seed gives the same samples (default: random, "
                   "printed)")
    s.add_argument("--model", help="name or name@version (default: the server's default model)")
    s.add_argument("--truncation", type=float, default=0.0,
                   help="0 = off; else latent entries beyond this threshold are redrawn (fewer, typical samples)")
    s.add_argument("--nrow", type=int, help="images per row of the PNG grid (default: about square)")
    s.add_argument("--out", type=Path, default=Path("samples.png"), help="samples.png (default), x.npy or x.npz")

    s = sub.add_parser("interpolate", help="a path through seeds, saved as a PNG strip")
    s.add_argument("--seeds", type=int, nargs="+", required=True, help="the path's points, as seeds (two or more)")
    s.add_argument("--labels", type=int, nargs="+", help="one class per seed (conditional models)")
    s.add_argument("--steps", type=int, default=8, help="images per segment between two seeds (default 8)")
    s.add_argument("--method", choices=["slerp", "linear"], default="slerp",
                   help="slerp (default: stays on the Gaussian shell) or linear")
    s.add_argument("--model", help="name or name@version (default: the server's default model)")
    s.add_argument("--out", type=Path, default=Path("interpolation.png"), help="PNG strip (default interpolation.png)")

    s = sub.add_parser("invert", help="images (PNG or .npy) -> latents; prints the reconstruction error")
    s.add_argument("images", type=Path, nargs="+",
                   help="grayscale PNGs (e.g. written by `sample`) or .npy arrays (N, C, H, W) in the model's range")
    s.add_argument("--label", type=int, help="the images' class (conditional models)")
    s.add_argument("--method", choices=["encoder", "optimize", "hybrid"],
                   help="encoder (fast), optimize or hybrid (gradient steps); default: the server's choice")
    s.add_argument("--steps", type=int, default=0, help="gradient steps for optimize/hybrid (0: the server's default)")
    s.add_argument("--model", help="name or name@version (default: the server's default model)")
    s.add_argument("--out", type=Path, help="save the reconstructions as a PNG grid")

    s = sub.add_parser("evaluate", help="divergences between P and Q, as a table")
    s.add_argument("--reference", "--p", dest="p", default="mnist-test",
                   help="P: a reference (mnist-test, mnist-train, mnist-valid, ring8, grid25) or a model")
    s.add_argument("--model", "--q", dest="q", help="Q: the model under test (or a reference)")
    s.add_argument("--compare", nargs="+", metavar="MODEL", help="evaluate several Q against the same P")
    s.add_argument("--labels", type=int, nargs="+", help="labels for a conditional Q model")
    s.add_argument("--metrics", nargs="+", help="metric names (default: the server's set for the data)")
    s.add_argument("--n", type=int, default=0, help="samples per side (0: the server's default)")
    s.add_argument("--seed", type=int, default=0, help="seed of the samples drawn (default 0)")
    s.add_argument("--bootstrap", type=int, default=None,
                   help="resamples for intervals (default: the server's; 0: no interval)")
    s.add_argument("--plot", type=Path, help="PNG: class histograms side by side (images), samples over the true "
                   "density's contours (ring8, grid25), else the metrics with their intervals")

    s = sub.add_parser("models", help="list served models")
    s.add_argument("--all", action="store_true", help="every callable version, not only the default one")
    s.add_argument("--index", action="store_true", help="every version in the store with its state and reason "
                   "(UNAVAILABLE, CANDIDATE, RETIRED too); * marks the version the bare name means")
    s.add_argument("--json", action="store_true", help="every field of every model, as JSON")
    return p


COMMANDS = {"sample": cmd_sample, "interpolate": cmd_interpolate, "invert": cmd_invert, "evaluate": cmd_evaluate,
            "models": cmd_models}


def _check_extras(a) -> None:
    """Refuse before any call what this install cannot do: read or write a PNG without Pillow (the thin SDK's
    `images` extra), which would otherwise surface as a traceback after the samples were made."""
    out = getattr(a, "out", None)
    if (out is not None and out.suffix == ".png") or any(p.suffix != ".npy" for p in getattr(a, "images", [])):
        try:
            require_pillow()
        except ImportError as e:
            raise UsageError(f"{e}" + ("; or --out with .npz / .npy" if a.command == "sample" else "")) from None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        _check_extras(args)
        with connect(args) as client:
            print(COMMANDS[args.command](client, args))
    except GanserveError as e:
        field = f" [{e.field}]" if e.field and e.field not in e.details else ""
        print(f"error: {e.code.name}: {e.details}{field}", file=sys.stderr)
        return 1
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
