"""TorchServe as a deployment target: export a model-store generator to a .mar that serves it with ONNX
Runtime, and the TorchServe handler itself (this file is copied into the archive as the handler).

    python -m training.torchserve --model gan-mnist --out DIR [--store model_store] [--version N]
    torchserve --start --ncs --disable-token-auth --model-store DIR --models gan-mnist=gan-mnist.mar
    curl -X POST localhost:8080/predictions/gan-mnist -H 'Content-Type: application/json' \\
         -d '{"n": 4, "seed": 7}' -o x.f32      # float32 (4, 1, 28, 28), row-major little-endian

The archive holds generator.onnx, the model's manifest.json, protos/latents.py (as latents.py: the same
seed -> latents function as ganserve, so a seed gives the same images from both servers) and this file as
`ganserve_handler.py`. TorchServe is in limited maintenance upstream (no new features or regular releases);
this target exists for teams that already run it.

Request (JSON body): {"n": 1..max_n (default 1), "seed": 0..2**64-1 (default: random, returned in the
x-seed header), "labels": [int] (conditional models: one for all or n), "encoding": "float32" | "uint8",
"truncation": >= 0}. Response: the raw samples, row-major little-endian, with headers x-shape ("4,1,28,28"),
x-dtype and x-seed. A bad request gets HTTP 400 with a JSON {"error": ...} naming the field, without failing
the other requests of its TorchServe batch.

The handler imports only numpy, onnxruntime and the standard library (no torch): its module must define
exactly one class (TorchServe's loader instantiates the only class it finds), so everything else here is
plain functions, and a bad request is a ValueError.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

try:  # inside a .mar: the copy of protos/latents.py shipped beside this file
    import latents as latent_fn
except ImportError:  # in the repository
    from protos import latents as latent_fn

HANDLER_FILE = "ganserve_handler.py"
DEFAULT_MAX_N = 1024
THREADS_ENV = "GANSERVE_TS_INTRA_OP_THREADS"


def _session(path: str, threads: int):
    """The handler's own session (inside a .mar the ganserve package is absent; same options as its open_session)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def parse_request(body, manifest: dict, max_n: int) -> dict:
    """A request body (dict, JSON bytes or str) -> validated {n, seed, labels, encoding, truncation}."""
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8") if body else "{}"
    if isinstance(body, str):
        try:
            body = json.loads(body) if body.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"body: not valid JSON ({e})") from e
    if not isinstance(body, dict):
        raise ValueError(f"body: must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - {"n", "seed", "labels", "encoding", "truncation"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field (known: n, seed, labels, encoding, truncation)")
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_n:
        raise ValueError(f"n: must be an integer in 1..{max_n}, got {n!r}")
    seed = body.get("seed")
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= latent_fn.MAX_SEED:
        raise ValueError(f"seed: must be an integer in 0..2**64-1, got {seed!r}")
    encoding = body.get("encoding", "float32")
    if encoding not in ("float32", "uint8"):
        raise ValueError(f"encoding: must be 'float32' or 'uint8', got {encoding!r}")
    if encoding == "uint8" and not manifest.get("output", {}).get("value_range"):
        raise ValueError("encoding: uint8 needs a model with a value range (images); this one outputs points")
    truncation = body.get("truncation", 0.0)
    if not isinstance(truncation, int | float) or isinstance(truncation, bool) or not truncation >= 0:
        raise ValueError(f"truncation: must be a number >= 0, got {truncation!r}")
    k = manifest["num_classes"]
    labels = body.get("labels")
    if k:
        if labels is None:
            raise ValueError(f"labels: this model is conditional; give one label or {n} labels in 0..{k - 1}")
        if (not isinstance(labels, list) or len(labels) not in (1, n)
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < k for v in labels)):
            raise ValueError(f"labels: must be 1 or {n} integers in 0..{k - 1}, got {labels!r}")
    elif labels is not None:
        raise ValueError("labels: this model is not conditional")
    return {"n": n, "seed": seed, "labels": labels, "encoding": encoding, "truncation": float(truncation)}


def inputs_for(req: dict, manifest: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """(z (n, latent_dim), y (n, num_classes) one-hot or None) of a parsed request."""
    z = latent_fn.latents(req["seed"], req["n"], manifest["latent_dim"], truncation=req["truncation"])
    k = manifest["num_classes"]
    if not k:
        return z, None
    labels = np.asarray(req["labels"] * req["n"] if len(req["labels"]) == 1 else req["labels"])
    return z, np.eye(k, dtype=np.float32)[labels]


def encode(x: np.ndarray, encoding: str, value_range) -> bytes:
    if encoding == "uint8":
        lo, hi = value_range
        x = np.round(np.clip((x - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(x, x.dtype.newbyteorder("<")).tobytes()


class GeneratorHandler:
    """TorchServe custom handler: initialize(context) once per worker, handle(data, context) per batch.

    TorchServe's batching hands `handle` a list of requests; their latents are concatenated into one ONNX
    Runtime run and the output is split back, so each request's samples are the same batched or not.
    """

    def __init__(self):
        self.session = None
        self.manifest: dict = {}

    def initialize(self, context) -> None:
        model_dir = Path(context.system_properties.get("model_dir"))
        self.manifest = json.loads((model_dir / "manifest.json").read_text())
        handler_cfg = (getattr(context, "model_yaml_config", None) or {}).get("handler", {}) or {}
        threads = int(os.environ.get(THREADS_ENV, handler_cfg.get("intra_op_threads", 1)))
        self.max_n = int(handler_cfg.get("max_n", DEFAULT_MAX_N))
        self.session = _session(str(model_dir / self.manifest["graphs"]["generator"]["file"]), threads)
        graph = self.manifest["graphs"]["generator"]
        self.input_names = [s["name"] for s in graph["inputs"]]
        self.output_name = graph["outputs"][0]["name"]

    def run(self, z: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        feeds = {self.input_names[0]: z}
        if y is not None:
            feeds[self.input_names[1]] = y
        return self.session.run([self.output_name], feeds)[0]

    def handle(self, data: list, context) -> list:
        parsed, replies = [], [None] * len(data)
        for i, row in enumerate(data):
            body = row.get("body") if row.get("body") is not None else row.get("data")
            try:
                parsed.append((i, parse_request(body, self.manifest, self.max_n)))
            except ValueError as e:
                context.set_response_status(400, str(e), i)
                context.set_response_content_type(i, "application/json")
                replies[i] = json.dumps({"error": str(e)})
        if parsed:
            zs, ys = zip(*(inputs_for(req, self.manifest) for _, req in parsed))
            x = self.run(np.concatenate(zs), None if ys[0] is None else np.concatenate(ys))  # (sum n, *shape)
            lo = 0
            value_range = self.manifest["output"].get("value_range")
            for i, req in parsed:
                xi = x[lo:lo + req["n"]]
                lo += req["n"]
                replies[i] = encode(xi, req["encoding"], value_range)
                context.set_response_content_type(i, "application/octet-stream")
                context.set_response_header(i, "x-shape", ",".join(str(d) for d in xi.shape))
                context.set_response_header(i, "x-dtype", req["encoding"])
                context.set_response_header(i, "x-seed", str(req["seed"]))
        return replies


# -- export ---------------------------------------------------------------------------------------------

def resolve_version(store: Path, model: str, version: int | None) -> Path:
    """The version folder to export: `version`, or the newest valid one (manifest and sha256 checked)."""
    # Imported here, not at the top: this file is also the handler inside a .mar, where ganserve is absent.
    from ganserve.store.sessions import newest_valid

    vdir, manifest = newest_valid(store, model, version)
    if manifest["kind"] == "evaluator" or "generator" not in manifest["graphs"]:
        raise ValueError(f"{model}@{manifest['version']} has no generator graph (kind {manifest['kind']})")
    return vdir


def export_mar(store: Path, model: str, out: Path, *, version: int | None = None, name: str | None = None,
               intra_op_threads: int = 1, max_n: int = DEFAULT_MAX_N, batch_size: int = 1,
               max_batch_delay_ms: int = 0, workers: int = 1) -> Path:
    """Build <out>/<name>.mar (name defaults to the model name) serving `model` from `store`.

    The model-config.yaml inside sets TorchServe's worker count and batching for this model
    (batch_size 1 = no batching); registration parameters given to the management API override them.
    """
    from model_archiver.model_packaging import (
        ModelArchiverConfig,
        generate_model_archive,
    )

    vdir = resolve_version(store, model, version)
    manifest = json.loads((vdir / "manifest.json").read_text())
    name = name or model
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copyfile(__file__, tmp / HANDLER_FILE)
        shutil.copyfile(latent_fn.__file__, tmp / "latents.py")
        shutil.copyfile(vdir / "manifest.json", tmp / "manifest.json")
        onnx_file = manifest["graphs"]["generator"]["file"]
        shutil.copyfile(vdir / onnx_file, tmp / onnx_file)
        (tmp / "model-config.yaml").write_text(
            f"minWorkers: {workers}\nmaxWorkers: {workers}\nbatchSize: {batch_size}\n"
            f"maxBatchDelay: {max_batch_delay_ms}\nresponseTimeout: 120\n"
            f"handler:\n  intra_op_threads: {intra_op_threads}\n  max_n: {max_n}\n")
        generate_model_archive(ModelArchiverConfig(
            model_name=name, handler=str(tmp / HANDLER_FILE), version=str(manifest["version"]),
            serialized_file=str(tmp / onnx_file), extra_files=f"{tmp / 'latents.py'},{tmp / 'manifest.json'}",
            export_path=str(out), archive_format="default", force=True,
            config_file=str(tmp / "model-config.yaml")))
    return out / f"{name}.mar"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.torchserve",
                                description="Export a model-store generator as a TorchServe .mar (ONNX Runtime handler)")
    p.add_argument("--model", required=True, help="model name in the store, e.g. gan-mnist")
    p.add_argument("--out", required=True, type=Path, help="folder for <name>.mar (a TorchServe model store)")
    p.add_argument("--store", default=Path("model_store"), type=Path, help="model store folder")
    p.add_argument("--version", type=int, default=None, help="version to export (default: newest valid)")
    p.add_argument("--name", default=None, help="TorchServe model name (default: the model name); register the "
                                                "archive under this same name")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per TorchServe worker")
    p.add_argument("--workers", type=int, default=1, help="TorchServe workers (processes) for this model")
    p.add_argument("--batch-size", type=int, default=1, help="TorchServe batch size (1 = no batching)")
    p.add_argument("--max-batch-delay-ms", type=int, default=0, help="TorchServe max batch delay")
    p.add_argument("--max-n", type=int, default=DEFAULT_MAX_N, help="largest n of one request")
    args = p.parse_args(argv)
    for flag in ("threads", "workers", "batch_size", "max_n"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.max_batch_delay_ms < 0:
        p.error(f"--max-batch-delay-ms must be >= 0, got {args.max_batch_delay_ms}")
    try:
        mar = export_mar(args.store, args.model, args.out, version=args.version, name=args.name,
                         intra_op_threads=args.threads, max_n=args.max_n, batch_size=args.batch_size,
                         max_batch_delay_ms=args.max_batch_delay_ms, workers=args.workers)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(mar)
    return 0


if __name__ == "__main__":
    sys.exit(main())
