"""ONNX export with a dynamic batch axis, parity against torch, ORT speed, and the manifest's graph specs."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ganserve.store.check import graph_spec  # noqa: F401 - the families import it from here
from ganserve.store.sessions import open_session

OPSET = 17


def export_onnx(module: nn.Module, example: dict[str, torch.Tensor], output_names: list[str], path: Path,
                probe: Callable[[int, torch.Generator], dict[str, torch.Tensor]] | None = None,
                probe_batch: int = 37) -> float:
    """Export `module(**example)` to `path` (batch axis "N" dynamic) and return the max abs difference
    between torch and ONNX Runtime on fresh random inputs of another batch size.

    `probe(n, gen)` draws those inputs (default: standard normal of each example's shape); the caller passes
    one when inputs have a domain, e.g. class-probability vectors or images in [0, 1].
    """
    module.eval()
    names = list(example)
    buf = io.BytesIO()
    torch.onnx.export(module, tuple(example.values()), buf, input_names=names, output_names=output_names,
                      dynamic_axes={n: {0: "N"} for n in [*names, *output_names]}, opset_version=OPSET,
                      dynamo=False)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)

    gen = torch.Generator().manual_seed(1234)
    inputs = probe(probe_batch, gen) if probe else {
        n: torch.randn(probe_batch, *t.shape[1:], generator=gen) for n, t in example.items()}
    with torch.no_grad():
        ref = module(**inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    sess = open_session(path)
    got = sess.run(output_names, {n: t.numpy() for n, t in inputs.items()})
    return max(float(np.abs(r.numpy() - g).max()) for r, g in zip(ref, got))


def ort_samples_per_s(path: Path, make_feeds: Callable[[int], dict[str, np.ndarray]], batch: int,
                      threads: int = 2, min_time: float = 1.0) -> float:
    """In-process ONNX Runtime throughput (samples/s) at a fixed batch size, after a warm-up."""
    sess = open_session(path, threads=threads)
    feeds = make_feeds(batch)
    for _ in range(3):
        sess.run(None, feeds)
    n, t0 = 0, time.perf_counter()
    while True:
        sess.run(None, feeds)
        n += batch
        dt = time.perf_counter() - t0
        if dt >= min_time and n >= 3 * batch:
            return n / dt


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
