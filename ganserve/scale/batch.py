"""The batch job (`python -m sdk.batch --engine ray`) on a Ray cluster: byte-identical shards, no gRPC hop.

1. The driver resolves the model in the store (a path every node can read) and pins name@version.
2. It starts `workers` ShardMaker actors (default: one per CPU of the cluster), spread over the nodes, each
   reserving a fraction of a CPU (whole CPUs starve Ray's own tasks on small nodes) and opening the generator
   once with one intra-op thread.
3. Each shard is one task: the actor draws the seed's latents for the shard's rows (protos.latents), runs
   the generator, encodes as the server does (ganserve.images) and writes the file through the batch job's
   own `make_shard`, so the bytes are those of the single-machine job. Two tasks per actor keep it busy.
4. The driver records each finished shard in the manifest as it lands (sdk.batch), so a killed driver
   resumes like the single-machine job. A killed worker: Ray restarts the actor and retries its shards
   (`retries` times); past that the shard is reported missing and a re-run makes only the missing shards.
Workers get this code with the job (runtime_env py_modules), so nodes need only the third-party packages.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import ray

import ganserve
import protos
from ganserve import images
from ganserve.conditions import SOFT_LABEL_TOLERANCE, is_conditional, one_hot
from ganserve.scale import cluster
from ganserve.store import manifest as mf
from ganserve.store import policy as pol
from ganserve.store import sessions
from protos import latents as latent_fn

IN_FLIGHT_PER_WORKER = 2


def resolve(store: Path, ref: str) -> tuple[Path, dict]:
    """(version folder, manifest) of `ref`: "name@version", or "name" = the version the server's registry
    serves for it by default under the store's own policy (ganserve.store.policy.decide over the versions
    whose manifest and sha256 check out; a server's --version-policy flag is not seen here: pin name@version)."""
    name, _, version = ref.partition("@")
    if not mf.NAME_RE.match(name) or (version and not (version.isascii() and version.isdigit())):
        raise ValueError(f"model must be a name (optionally @version) matching {mf.NAME_RE.pattern}, got {ref!r}")
    if not version:
        valid = {}
        for v in sessions.versions(store, name):
            try:
                valid[v] = sessions.newest_valid(store, name, v)[1]
            except FileNotFoundError:
                continue
        try:
            version = pol.decide(valid, pol.read(Path(store) / name) or pol.Policy()).default
        except pol.PolicyError as e:
            raise ValueError(str(e)) from e
        if version is None:
            raise ValueError(f"no servable version of {name!r} in {store}")
    try:
        return sessions.newest_valid(store, name, int(version))
    except FileNotFoundError as e:
        raise ValueError(str(e)) from e


def check_job(manifest: dict, job: dict) -> None:
    """What the server would refuse, refused before any worker starts (ValueError naming the field)."""
    conditional = is_conditional(manifest)
    k = int(manifest["num_classes"])
    if manifest["kind"] == "evaluator" or "generator" not in manifest["graphs"]:
        raise ValueError(f"{job['model']} is not a generator")
    soft = job.get("soft_labels") or []
    if conditional and not (job["labels"] or soft):
        raise ValueError(f"labels: {job['model']} is conditional (kind {manifest['kind']}): give --labels or --soft-labels")
    if not conditional and (job["labels"] or soft):
        raise ValueError(f"labels: {job['model']} is unconditional (kind {manifest['kind']}); send no labels")
    bad = [y for y in job["labels"] if not 0 <= y < k]
    if bad:
        raise ValueError(f"labels: must be in 0..{k - 1}, got {bad[0]}")
    if soft:
        p = np.asarray(soft, np.float32)
        if p.shape != (k,) or (p < 0).any() or abs(float(p.sum(dtype=np.float64)) - 1) > SOFT_LABEL_TOLERANCE:
            raise ValueError(f"soft_labels: must be {k} non-negative probabilities summing to 1 (within "
                             f"{SOFT_LABEL_TOLERANCE}), got {soft}")
    if job["encoding"] == "uint8" and not (manifest["output"] or {}).get("value_range"):
        raise ValueError(f"encoding: {job['model']} has no value range (2-D points): use float32")


@ray.remote
class ShardMaker:
    """One model version's generator, opened once; makes shards on request."""

    def __init__(self, folder: str, threads: int = 1):
        folder = Path(folder)
        self.manifest = mf.read_manifest(folder)
        mf.verify_files(folder, self.manifest)
        graph = self.manifest["graphs"]["generator"]
        self.session = sessions.open_session(mf.graph_model(folder, self.manifest, "generator"), threads=threads)
        self.inputs = [s["name"] for s in graph["inputs"]]
        self.output = graph["outputs"][0]["name"]
        self.k = int(self.manifest["num_classes"])
        vr = (self.manifest["output"] or {}).get("value_range")
        self.value_range = tuple(vr) if vr else None

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def _rows(self, job: dict, chunk: int, start: int, count: int, labels: list[int] | None) -> Iterator[np.ndarray]:
        dim = int(self.manifest["latent_dim"])
        for lo in range(0, count, chunk):
            size = min(chunk, count - lo)
            feeds = {self.inputs[0]: latent_fn.latents(job["seed"], size, dim, offset=start + lo)}  # (size, dim)
            if len(self.inputs) > 1 and job.get("soft_labels"):  # (size, K): the vector on every row
                feeds[self.inputs[1]] = np.repeat(np.asarray([job["soft_labels"]], np.float32), size, 0)
            elif len(self.inputs) > 1:  # (size, K) one-hot rows, as the server builds them from labels
                feeds[self.inputs[1]] = one_hot(labels * size if len(labels) == 1 else labels[lo:lo + size], self.k)
            x = self.session.run([self.output], feeds)[0]
            problem, x = images.checked(x, self.value_range, clamped=job["encoding"] != "uint8")
            if problem:  # as the server: a wrong answer is never written
                raise RuntimeError(f"{job['model']} {problem}; shard not written")
            yield images.to_uint8(x, self.value_range) if job["encoding"] == "uint8" else x

    def make(self, make_shard: Callable, job: dict, index: int, out: str, chunk: int) -> tuple[dict, str]:
        entry = make_shard(job, index, out, lambda start, count, labels: self._rows(job, chunk, start, count, labels))
        return entry, self.node()


class RayEngine:
    """Connects to (or starts) a Ray cluster for one batch job; a context manager."""

    def __init__(self, store: str | Path, *, address: str = "local", workers: int = 0, cpus_per_worker: float = 0.5,
                 retries: int = 3, chunk_size: int = 1024, threads: int = 1, ship: tuple = ()):
        """`ship`: packages the workers need besides ganserve and protos (the caller's, e.g. the batch job's)."""
        if cpus_per_worker <= 0 or workers < 0:
            raise ValueError("--cpus-per-worker must be > 0 and --workers >= 0")
        self.store, self.address, self.workers = Path(store), address, workers
        self.cpus, self.retries, self.chunk, self.threads = cpus_per_worker, retries, chunk_size or 1024, threads
        self.py_modules = [ganserve, protos, *ship]
        self._owns_ray = False

    def __enter__(self) -> "RayEngine":
        # py_modules: the workers import this code from the job, not from whatever the node has installed
        self._owns_ray = cluster.connect(self.address, runtime_env={"py_modules": self.py_modules})
        return self

    def __exit__(self, *exc) -> None:
        if self._owns_ray:
            ray.shutdown()

    def resolve(self, ref: str) -> str:
        _, manifest = resolve(self.store, ref)
        return f"{manifest['name']}@{manifest['version']}"

    def shards(self, job: dict, todo: list[int], out, make_shard: Callable, progress) -> Iterator[dict]:
        """Make shards `todo` of `job` into `out` (sdk/_output.py's folder: a shared path or a URL the workers
        write to themselves), yielding each manifest entry as it lands (in any order); RuntimeError at the end
        naming the shards that could not be made."""
        folder, manifest = resolve(self.store, job["model"])
        check_job(manifest, job)
        if not todo:
            return
        k = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        k = min(k, len(todo))
        opts = dict(num_cpus=self.cpus, max_restarts=self.retries, max_task_retries=self.retries,
                    scheduling_strategy="SPREAD")
        t0 = time.monotonic()
        actors = [ShardMaker.options(**opts).remote(str(folder.resolve()), self.threads) for _ in range(k)]
        try:  # wait for the workers (process start, imports, session) so their start-up is reported apart
            nodes = ray.get([a.node.remote() for a in actors])
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(f"the generator workers could not start: {e}") from e
        print(f"ray: {k} worker(s) on {len(set(nodes))} node(s) ready in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        queue, inflight, failed, per_node = deque(todo), {}, {}, Counter()
        out = out.for_workers()

        def submit(actor) -> None:
            index = queue.popleft()
            inflight[actor.make.remote(make_shard, job, index, out, self.chunk)] = (index, actor)

        for _ in range(IN_FLIGHT_PER_WORKER):
            for actor in actors:
                if queue:
                    submit(actor)
        try:
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1)
                index, actor = inflight.pop(ready[0])
                try:
                    entry, node = ray.get(ready[0])
                except ray.exceptions.RayActorError as e:  # the worker died and Ray's retries are spent
                    failed[index] = f"worker died ({type(e).__name__})"
                    continue
                except ray.exceptions.RayTaskError as e:
                    failed[index] = f"{type(e.cause).__name__}: {e.cause}"
                    continue
                per_node[node[:8]] += 1
                progress.update(entry["count"])
                yield entry
                if queue:  # the live workers take over the shards of a dead one as they finish theirs
                    submit(actor)
        finally:
            for actor in actors:
                ray.kill(actor)
        print(f"ray: {sum(per_node.values())} shard(s) on {len(per_node)} node(s) ("
              + ", ".join(f"{n}: {c}" for n, c in sorted(per_node.items())) + f") by {k} worker(s)", file=sys.stderr)
        missing = sorted(failed) + sorted(queue)
        if missing:
            why = "; ".join(f"shard {i}: {failed.get(i, 'no live worker left')}" for i in missing[:5])
            raise RuntimeError(f"{len(missing)} shard(s) not made ({why}); run the same command again to make them")
