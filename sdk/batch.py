"""Batch sampling job: stream millions of samples into sharded .npz files, resumable and reproducible.

    python -m sdk.batch --model cgan-mnist --n 1000000 --out DIR [--labels 3 7] [--seed S] [--shard-size N]

- Shard i holds samples i*S .. i*S+S-1 of the seed's sequence (SampleStream with `offset`), so any shard can
  be made on its own and equals the same rows of one big Sample call.
- DIR/manifest.json records the job (model pinned to name@version, seed, n, labels, encoding, shard size)
  and, per finished shard, its file, first index, count and sha256. Shards are written to a temporary name
  and renamed, then the manifest is rewritten (also atomically).
- Run the same command again after a kill: shards whose file matches its recorded sha256 are skipped, the
  rest are made again. A different job in the same DIR is refused.
- Files are written byte-for-byte deterministically (fixed zip timestamps), so the same seed gives
  identical shards and identical checksums.
- Labels: one label for every sample, or several cycled over the samples (sample i gets labels[i % k]);
  or --soft-labels, one class-probability vector for every sample (kept in each shard as `soft_labels`).
- `--engine ray [--address ADDR] [--store DIR]`: the same shards and manifest, byte for byte, made by actors
  of a Ray cluster that run the generator themselves (ganserve.scale.batch; docs/scaling_out.md).
- `--out` may be an fsspec URL (s3://bucket/job, file:///shared/job, ...): the same files, written whole and
  checked by sha256 on resume as in a folder (sdk/_output.py; pip install fsspec).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from sdk._cli import add_connection_args, connect
from sdk._client import Client
from sdk._errors import GanserveError, ResourceExhaustedError, UnavailableError
from sdk._output import FsspecFolder, LocalFolder, output
from sdk._progress import progress as progress_bar

MANIFEST = "manifest.json"
FORMAT = 1


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez without timestamps: the same arrays always give the same bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                arr = np.asarray(arr)
                np.lib.format.write_array(f, arr if arr.flags.c_contiguous else np.ascontiguousarray(arr),
                                          allow_pickle=False)


def _write_manifest(out: LocalFolder | FsspecFolder, manifest: dict) -> None:
    out.write_text(MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _job(args, model_ref: str, seed: int) -> dict:
    return {"format": FORMAT, "model": model_ref, "requested_model": args.model, "seed": seed, "n": args.n,
            "shard_size": args.shard_size, "labels": args.labels or [], "soft_labels": args.soft_labels or [],
            "encoding": args.encoding}


def _shard_labels(labels: list[int], start: int, count: int) -> list[int] | None:
    if not labels:
        return None
    if len(labels) == 1:
        return labels
    return [labels[(start + j) % len(labels)] for j in range(count)]


# What makes a shard's samples: generate(start, count, labels) -> arrays of consecutive rows. The gRPC engine
# streams them from a server; the Ray engine (ganserve.scale) runs the generator in its worker processes.
Generate = Callable[[int, int, "list[int] | None"], Iterable[np.ndarray]]


def make_shard(job: dict, index: int, out, generate: Generate, progress=None) -> dict:
    """Shard `index` of `job`: its samples from `generate`, written whole to shard-NNNNN.npz in `out` (a folder,
    a path or a URL: sdk/_output.py); the manifest entry. Every engine writes its shards here, so their bytes
    cannot drift apart."""
    start = index * job["shard_size"]
    count = min(job["shard_size"], job["n"] - start)
    labels = _shard_labels(job["labels"], start, count)
    parts = []
    for part in generate(start, count, labels):
        parts.append(part)
        if progress is not None:
            progress.update(len(part))
    samples = np.concatenate(parts)
    if len(samples) != count:
        raise RuntimeError(f"shard {index}: the engine returned {len(samples)} samples, expected {count}")
    arrays = {"samples": samples, "start": np.array(start, np.int64)}
    if labels is not None:
        arrays["labels"] = np.array(labels * count if len(labels) == 1 else labels, np.int64)
    if job["soft_labels"]:  # (K,): the class-probability vector every sample of the job was drawn with
        arrays["soft_labels"] = np.array(job["soft_labels"], np.float32)
    name = f"shard-{index:05d}.npz"
    digest = output(out).write_file(name, lambda path: write_npz(path, arrays))
    return {"index": index, "file": name, "start": start, "count": count, "sha256": digest}


_INTERRUPTED = threading.Event()


def _on_sigint(signum, frame):
    """Ctrl-C only sets a flag; the job raises KeyboardInterrupt itself at the next chunk or shard. Raised from the
    handler, the exception could land inside gRPC's stream code, where it was seen lost and the call left waiting
    for ever (a job ran on 60 s past Ctrl-C)."""
    _INTERRUPTED.set()


def _check_interrupt() -> None:
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


def _grpc_shards(client: Client, job: dict, todo: list[int], out, args, progress) -> Iterator[dict]:
    """The single-machine engine: each shard is one SampleStream from the server, retried on
    UNAVAILABLE/RESOURCE_EXHAUSTED."""

    def generate(start, count, labels):
        for chunk in client.stream(count, labels=labels, soft_labels=job["soft_labels"] or None, seed=job["seed"],
                                   model=job["model"], offset=start, chunk_size=args.chunk_size,
                                   encoding=job["encoding"]):
            _check_interrupt()
            yield chunk.images

    for index in todo:
        for attempt in range(args.retries + 1):
            before = progress.n
            try:
                yield make_shard(job, index, out, generate, progress)
                break
            except (UnavailableError, ResourceExhaustedError):
                progress.update(before - progress.n)
                if attempt == args.retries:
                    raise
                time.sleep(min(2.0, 0.1 * 2 ** attempt))


def _open_job(args, out: LocalFolder | FsspecFolder, resolve: Callable[[str], str]) -> dict:
    """The manifest of the job in `out`: the one found there (refused if it is a different job) or a new one
    with the model pinned to name@version by `resolve`."""
    found = out.read_text(MANIFEST)
    if found is not None:
        manifest = json.loads(found)
        job = {k: manifest.get(k, []) for k in _job(args, "", 0)}  # soft_labels: [] in older manifests
        asked = _job(args, job["model"], args.seed if args.seed is not None else job["seed"])
        if asked != job:
            diff = ", ".join(f"{k}: {job[k]!r} vs {asked[k]!r}" for k in job if job[k] != asked[k])
            raise ValueError(f"{out} holds a different job ({diff}); use another --out")
        return manifest
    job = _job(args, resolve(args.model), args.seed if args.seed is not None else secrets.randbits(63))
    manifest = {**job, "shards": {}, "complete": False}
    _write_manifest(out, manifest)
    return manifest


def run(args) -> int:
    out = output(args.out)
    if args.engine == "ray" and not out.shared:
        raise ValueError(f"--out {out}: the Ray workers cannot write there (memory:// is this process's own); "
                         "give a path every node mounts or an object store URL")
    out.mkdir()
    with contextlib.ExitStack() as stack:
        if args.engine == "ray":
            # Imported only when asked: ray is an optional extra (pip install -e '.[ray]') and its import
            # alone takes seconds; the SDK itself stays free of it.
            try:
                from ganserve.scale.batch import RayEngine
            except ImportError as e:  # the thin SDK (pip install ./sdk) has no generators to run in-process
                raise SystemExit(f"--engine ray needs the full ganserve install with its ray extra "
                                 f"(pip install -e '.[ray]' in the repository): {e}") from None

            engine = stack.enter_context(RayEngine(args.store, address=args.address, workers=args.workers,
                                                   cpus_per_worker=args.cpus_per_worker, retries=args.retries,
                                                   chunk_size=args.chunk_size, ship=(sys.modules[__package__],)))
            resolve = engine.resolve
        else:
            client = stack.enter_context(connect(args))
            resolve = lambda name: client.get_model(name).ref  # noqa: E731
        manifest = _open_job(args, out, resolve)
        job = {k: manifest.get(k, []) for k in _job(args, "", 0)}
        shards = manifest["shards"]
        total = -(-job["n"] // job["shard_size"])
        done = {int(i) for i, s in shards.items() if out.sha256(s["file"]) == s["sha256"]}
        skipped = sum(shards[str(i)]["count"] for i in done)
        if shards:
            print(f"resuming: {len(done)} of {total} shards already done and verified", file=sys.stderr)
        todo = [i for i in range(total) if i not in done]
        t0 = time.monotonic()
        with progress_bar(job["n"], job["model"], skipped, args.quiet) as progress:
            if args.engine == "ray":
                made = engine.shards(job, todo, out, make_shard, progress)
            else:
                made = _grpc_shards(client, job, todo, out, args, progress)
            for entry in made:
                shards[str(entry["index"])] = entry
                manifest["shards"] = dict(sorted(shards.items(), key=lambda kv: int(kv[0])))
                _write_manifest(out, manifest)
                _check_interrupt()
        manifest["complete"] = len(shards) == total
        _write_manifest(out, manifest)
    made = job["n"] - skipped
    secs = time.monotonic() - t0
    print(f"{out}: {total} shards, {job['n']} samples of {job['model']} (seed {job['seed']}); made {made} in "
          f"{secs:.1f} s ({made / max(secs, 1e-9):.0f} samples/s), skipped {len(done)} finished shard(s)")
    return 0


def _progress_line(args) -> str:
    """"k/N shards done" from the stored manifest (what a rerun will skip)."""
    total = -(-args.n // args.shard_size)
    try:
        done = len(json.loads(output(args.out).read_text(MANIFEST) or "")["shards"])
    except (OSError, ValueError, KeyError):
        done = 0
    return f"{done}/{total} shards done"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sdk.batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model name (pinned to its current version in the manifest)")
    p.add_argument("--n", type=int, required=True, help="number of samples")
    p.add_argument("--out", required=True,
                   help="output folder, or an fsspec URL (s3://bucket/job, file:///shared/job; needs fsspec)")
    p.add_argument("--labels", type=int, nargs="+", help="one label for all, or several cycled over the samples")
    p.add_argument("--soft-labels", type=float, nargs="+", metavar="P",
                   help="one class-probability vector (K values summing to 1) for every sample, instead of --labels")
    p.add_argument("--seed", type=int, help="seed (default: a random one, recorded in the manifest)")
    p.add_argument("--shard-size", type=int, default=10_000, help="samples per .npz file")
    p.add_argument("--chunk-size", type=int, default=1024, help="samples per stream message")
    p.add_argument("--encoding", choices=["float32", "uint8"], default="float32",
                   help="float32 in the model's range (default) or uint8 (4x smaller)")
    p.add_argument("--retries", type=int, default=3, help="attempts per shard on UNAVAILABLE/RESOURCE_EXHAUSTED")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_connection_args(p, timeout=3600.0)  # here: seconds per shard stream (--engine grpc)
    ray = p.add_argument_group("the Ray engine (--engine ray; pip install -e '.[ray]', docs/scaling_out.md)")
    ray.add_argument("--engine", choices=["grpc", "ray"], default="grpc",
                     help="grpc: stream from a server (default); ray: run the generator on a Ray cluster's workers")
    ray.add_argument("--address", default="local",
                     help="Ray cluster to join (host:port, 'auto'); default: start a local one on this machine")
    ray.add_argument("--store", default="model_store", help="model store the Ray workers read (a shared path)")
    ray.add_argument("--workers", type=int, default=0, help="generator actors (default: one per CPU of the cluster)")
    ray.add_argument("--cpus-per-worker", type=float, default=0.5,
                     help="CPUs Ray reserves per actor (a fraction leaves room for Ray's own tasks)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.n < 1 or args.shard_size < 1 or args.chunk_size < 0:
        print("error: --n and --shard-size must be >= 1", file=sys.stderr)
        return 2
    if args.labels and args.soft_labels:
        print("error: give --labels or --soft-labels, not both", file=sys.stderr)
        return 2
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_sigint) if main_thread else None
    _INTERRUPTED.clear()
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {_progress_line(args)} - rerun the same command to resume",
              file=sys.stderr)
        return 130
    except GanserveError as e:
        print(f"error: {e.code.name}: {e.details}", file=sys.stderr)
        return 1
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
