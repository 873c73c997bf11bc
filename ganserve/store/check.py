"""Opening a version exactly as the server does, and what it must pass before it is served: its sessions match
the manifest, and a probe run at several batch sizes returns the declared shapes, finite values, and generator
outputs inside the declared value range. Every failure is a ManifestError whose message is the one-line reason
shown to clients (GetModel/ListModels, NOT_FOUND) and in the log. The server's loader and training.publish
both call open_version, so a version that publishes is a version that loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ganserve.store import manifest as mf
from ganserve.store.manifest import ManifestError
from ganserve.store.sessions import CPU, open_session

ORT_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int64)": "int64"}
PROBE_BATCHES = (1, 2, 5)  # 1 and more than 1 (a fixed batch of either fails), and an odd size
RANGE_SLACK = 1e-3  # outputs may exceed value_range by this fraction of its width (float rounding of tanh etc.)
BATCH_FIX = ("re-export it with a dynamic batch axis (torch.onnx.export(..., dynamo=False, dynamic_axes="
             "{'z': {0: 'batch'}, 'x': {0: 'batch'}})) or publish it with `python -m training.publish`, which "
             "makes the axis dynamic when the graph allows")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def check_session(role: str, graph: dict[str, Any], session) -> None:
    """The manifest's inputs/outputs must be exactly the session's (names, order, dtype, non-batch dims), and
    every input's batch axis must be dynamic."""
    for what, specs, actual in (("inputs", graph["inputs"], session.get_inputs()),
                                ("outputs", graph["outputs"], session.get_outputs())):
        names = [a.name for a in actual]
        wanted = [s["name"] for s in specs]
        if what == "outputs":  # a graph may have extra outputs the manifest does not use
            if not set(wanted) <= set(names):
                raise ManifestError(f"graphs.{role}.outputs {wanted} not all in the ONNX graph's {names}")
        elif wanted != names:
            raise ManifestError(f"graphs.{role}.inputs {wanted} != the ONNX graph's inputs {names}")
        by_name = {a.name: a for a in actual}
        for s in specs:
            a = by_name[s["name"]]
            dtype = ORT_DTYPES.get(a.type, a.type)
            if dtype != s["dtype"]:
                raise ManifestError(f"graphs.{role}.{what} {s['name']}: manifest dtype {s['dtype']}, graph {dtype}")
            if what == "inputs" and a.shape and isinstance(a.shape[0], int):
                raise ManifestError(f"graphs.{role}.inputs {s['name']}: fixed batch size {a.shape[0]} (shape "
                                    f"{a.shape}); the server batches requests, so {BATCH_FIX}")
            if what == "outputs" and (not a.shape or len(a.shape) != len(s["dims"]) + 1):
                continue  # rank unknown to shape inference: the probe checks the real shape
            dims = list(a.shape[1:])
            if len(dims) != len(s["dims"]) or any(isinstance(d, int) and d != w for d, w in zip(dims, s["dims"])):
                raise ManifestError(f"graphs.{role}.{what} {s['name']}: manifest dims {s['dims']}, "
                                    f"graph {a.shape} (batch axis first)")


def _feeds(role: str, graph: dict[str, Any], manifest: dict[str, Any], n: int, rng) -> dict[str, np.ndarray]:
    """Probe inputs: latents ~ N(0, 1) as served, one-hot class vectors, images uniform in the value range."""
    k = manifest["num_classes"]
    lo, hi = manifest["output"].get("value_range") or (-1.0, 1.0)
    feeds = {}
    for i, s in enumerate(graph["inputs"]):
        shape = (n, *s["dims"])
        if s["dtype"] != "float32":
            feeds[s["name"]] = np.zeros(shape, s["dtype"])
        elif i > 0 and k > 0 and list(s["dims"]) == [k] and role != "classifier":
            feeds[s["name"]] = np.eye(k, dtype=np.float32)[np.arange(n) % k]  # (n, k) class probabilities
        elif role == "classifier":
            feeds[s["name"]] = rng.uniform(0.0, 1.0, shape).astype(np.float32)  # the evaluator reads [0, 1]
        elif list(s["dims"]) == [manifest["latent_dim"]] and i == 0 and role != "critic":
            feeds[s["name"]] = rng.standard_normal(shape).astype(np.float32)  # (n, latent_dim)
        else:
            feeds[s["name"]] = rng.uniform(lo, hi, shape).astype(np.float32)  # images / points
    return feeds


def probe(manifest: dict[str, Any], sessions: dict[str, Any]) -> None:
    """Run every graph at each of PROBE_BATCHES: it must run, return the manifest's shapes and finite values;
    the generator's samples must lie in output.value_range (when one is declared)."""
    main = "classifier" if manifest["kind"] == "evaluator" else "generator"
    if main == "generator" and tuple(manifest["graphs"]["generator"]["outputs"][0]["dims"]) != tuple(
            manifest["output"]["shape"]):
        raise ManifestError(f"output.shape {manifest['output']['shape']} != graphs.generator.outputs[0].dims "
                            f"{manifest['graphs']['generator']['outputs'][0]['dims']}")
    rng = np.random.default_rng(0)
    for role in [main, *(r for r in manifest["graphs"] if r != main)]:
        graph, session = manifest["graphs"][role], sessions[role]
        names = [s["name"] for s in graph["outputs"]]
        for n in PROBE_BATCHES:
            try:
                outs = session.run(names, _feeds(role, graph, manifest, n, rng))
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types; the reason is what matters
                hint = f"; the graph may fix the batch size: {BATCH_FIX}" if n > 1 else ""
                raise ManifestError(f"graphs.{role} fails on a probe batch of {n} ({_first_line(e)}){hint}") from e
            for spec, out in zip(graph["outputs"], outs):
                if tuple(out.shape) != (n, *spec["dims"]):
                    raise ManifestError(f"graphs.{role}.outputs {spec['name']}: manifest dims {spec['dims']}, a "
                                        f"probe batch of {n} returned shape {list(out.shape)}")
                if out.dtype.kind == "f" and not np.isfinite(out).all():
                    bad = int((~np.isfinite(out)).sum())
                    raise ManifestError(f"graphs.{role}.outputs {spec['name']}: {bad} non-finite value(s) (NaN or "
                                        f"inf) on a probe batch of {n}")
            vr = manifest["output"].get("value_range")
            if role == "generator" and vr:
                x, slack = outs[0], RANGE_SLACK * (vr[1] - vr[0])
                if x.min() < vr[0] - slack or x.max() > vr[1] + slack:
                    raise ManifestError(f"graphs.generator.outputs {names[0]}: values in [{x.min():.4g}, "
                                        f"{x.max():.4g}] on a probe batch of {n}, outside the declared "
                                        f"output.value_range {list(vr)}")


def open_version(folder: Path, *, threads: int = 1, providers=CPU) -> tuple[dict[str, Any], dict[str, Any],
                                                                         dict[str, str | bytes]]:
    """(manifest, sessions by role, what each session was opened on) of a checked version folder: manifest,
    sha256, one session per graph (a derived gradient graph built here), check_session, probe. ManifestError
    with the reason otherwise."""
    manifest = mf.read_manifest(folder)
    mf.verify_files(folder, manifest)
    sessions, graphs = {}, {}
    for role, graph in manifest["graphs"].items():
        model = graphs[role] = mf.graph_model(folder, manifest, role)
        where = f"{folder}/{graph['file']}" if "file" in graph else f"{folder}: {role} (derived)"
        try:
            sessions[role] = open_session(model, threads=threads, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for corrupt or unsupported files
            raise ManifestError(f"{where}: ONNX Runtime cannot load it ({_first_line(e)})") from e
        check_session(role, graph, sessions[role])
    probe(manifest, sessions)
    return manifest, sessions, graphs


def graph_spec(path: Path) -> dict:
    """{"file", "inputs": [{name, dtype, dims}], "outputs": [...]} of an ONNX file (dims without the batch axis).

    Input dims come from the graph; output dims from running it once on a batch of 2 (static shape
    inference loses them after a reshape with a dynamic batch).
    """
    np_types = {"float32": np.float32, "uint8": np.uint8, "int64": np.int64}
    sess = open_session(path)
    inputs = [{"name": i.name, "dtype": ORT_DTYPES[i.type], "dims": [int(d) for d in i.shape[1:]]}
              for i in sess.get_inputs()]
    feeds = {i["name"]: np.zeros((2, *i["dims"]), np_types[i["dtype"]]) for i in inputs}
    outs = sess.run(None, feeds)
    outputs = [{"name": o.name, "dtype": ORT_DTYPES[o.type], "dims": list(v.shape[1:])}
               for o, v in zip(sess.get_outputs(), outs)]
    return {"file": Path(path).name, "inputs": inputs, "outputs": outputs}
