"""Why Invert uses a gradient graph: the measured cost of dloss/dz (graph vs finite differences) and the
singular values of dG/dz that bound what any pixel objective can recover.

    python -c "from training.inversion_cost import grad_cost; print(grad_cost(Path('model_store/gan-mnist/9')))"
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ganserve.inversion import runtime as rt
from ganserve.store.manifest import graph_model
from ganserve.store.sessions import open_session
from training.inversion import read


def grad_cost(version_dir: Path, batch: int = 256, threads: int = 2, repeats: int = 5, seed: int = 0) -> dict:
    """Cost of dloss/dz for one model version, ms per image at `batch`, in ONNX Runtime (`threads` threads):

    - forward: generator.onnx alone;
    - grad_graph: one run of generator_grad.onnx (loss and grad_z: the forward plus the VJP);
    - finite_differences: a forward of the (latent_dim + 1) * batch perturbed latents (one-sided differences,
      the cheapest gradient that needs only the forward graph), measured, not extrapolated;
    and the agreement of the two gradients (cosine, mean over the batch).
    """
    m = read(version_dir)
    d, k = m["latent_dim"], m["num_classes"]
    gen = open_session(version_dir / m["graphs"]["generator"]["file"], threads=threads)
    grad = open_session(graph_model(version_dir, m, "generator_grad"), threads=threads)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((batch, d)).astype(np.float32)
    yb = {"y": np.eye(k, dtype=np.float32)[rng.integers(0, k, batch)]} if k else {}
    target = gen.run(["x"], {"z": rng.standard_normal((batch, d)).astype(np.float32), **yb})[0]

    def timed(fn) -> float:
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = fn()
        timed.out = out
        return 1000 * (time.perf_counter() - t0) / repeats / batch

    fwd = timed(lambda: gen.run(["x"], {"z": z, **yb})[0])
    gg = timed(lambda: grad.run(["loss", "grad_z"], {"z": z, "target": target, **yb}))
    g_graph = timed.out[1]
    h = 1e-2
    zp = np.concatenate([z[None], z[None] + h * np.eye(d, dtype=np.float32)[:, None, :]]).reshape(-1, d)  # ((d+1)B, d)
    yp = {"y": np.tile(yb["y"], (d + 1, 1))} if k else {}

    def fd():
        x = np.concatenate([gen.run(["x"], {"z": zp[i:i + 4096], **({"y": yp["y"][i:i + 4096]} if k else {})})[0]
                            for i in range(0, len(zp), 4096)]).reshape(d + 1, batch, -1).astype(np.float64)
        loss = ((x - target.reshape(1, batch, -1)) ** 2).sum(2)  # (d+1, B)
        return ((loss[1:] - loss[0]) / h).T  # (B, d)

    fdt = timed(fd)
    cos = rt.cosine(g_graph, timed.out).mean()
    return {"batch": batch, "threads": threads, "forward_ms_per_image": fwd, "grad_graph_ms_per_image": gg,
            "finite_differences_ms_per_image": fdt, "grad_over_forward": gg / fwd, "fd_over_grad": fdt / gg,
            "cosine_grad_graph_vs_fd": float(cos)}


def jacobian_spectrum(version_dir: Path, n: int = 8, h: float = 1e-2, seed: int = 0) -> dict:
    """Singular values of dG/dz (pixels in [0, 1]) at n prior latents, by central differences of generator.onnx.

    Why own-sample cosine is hard: latent directions with tiny singular values barely change the image, so no
    pixel objective can pin them down (an error of 1 along a direction with singular value s moves the image by
    s in L2, i.e. s^2 / 784 in per-pixel MSE).
    """
    m = read(version_dir)
    d, k = m["latent_dim"], m["num_classes"]
    g = open_session(version_dir / m["graphs"]["generator"]["file"], threads=1)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d)).astype(np.float32)
    eye = h * np.eye(d, dtype=np.float32)
    svs = []
    for i in range(n):
        feed = {"z": np.concatenate([z[i] - eye, z[i] + eye])}
        if k:
            feed["y"] = np.tile(np.eye(k, dtype=np.float32)[i % k], (2 * d, 1))
        x = g.run(["x"], feed)[0].reshape(2 * d, -1).astype(np.float64) / 2  # [0, 1] units
        svs.append(np.linalg.svd((x[d:] - x[:d]) / (2 * h), compute_uv=False))
    s = np.array(svs)  # (n, d), descending per row
    return {"n": n, "sv_max": float(s[:, 0].mean()), "sv_median": float(np.median(s, 1).mean()),
            "sv_min": float(s[:, -1].mean()), "dims_below_10pct_of_max": float((s < 0.1 * s[:, :1]).sum(1).mean())}
