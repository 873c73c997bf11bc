"""Half precision on this CPU: is an fp16 or bf16 variant worth publishing beside int8?

    python -m bench.half_precision [--models gan-mnist,cgan-mnist] [--n 256] [--rounds 7] [--json out.json]

For each model: the fp32 graph converted to fp16 (ONNX Runtime's own converter, float inputs and outputs kept),
its samples/s against fp32 at n samples on one intra-op thread (interleaved rounds, bench/inprocess.py; the
ratio per round), and its largest difference from fp32 on the same latents. bf16 is probed by loading a
one-node bf16 MatMul on the CPU execution provider. A variant is worth publishing only if it is faster and
close to fp32 (training/quantize.py makes int8, the one that is).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from onnxruntime.transformers.float16 import convert_float_to_float16

from bench.inprocess import Contender, interleave, ort_session
from bench.precision import spread
from ganserve.store import sessions

ROOT = Path(__file__).resolve().parent.parent


def bf16_kernels() -> str:
    """'yes', or why the CPU execution provider cannot run a bf16 MatMul."""
    t = TensorProto.BFLOAT16
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", t, [1, 4]), helper.make_tensor_value_info("w", t, [4, 4])],
                              [helper.make_tensor_value_info("y", t, None)])
    try:
        ort.InferenceSession(helper.make_model(graph).SerializeToString(), providers=["CPUExecutionProvider"])
        return "yes"
    except Exception as e:  # noqa: BLE001 - the refusal is the finding
        return str(e).splitlines()[0][:160]


def measure(store: Path, name: str, n: int, rounds: int, round_s: float, work: Path) -> dict:
    folder, m = sessions.newest_valid(store, name)
    src = folder / m["graphs"]["generator"]["file"]
    half = work / f"{name}-fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(half))
    s32, s16 = ort_session(str(src), 1), ort_session(str(half), 1)
    feeds = {"z": np.random.default_rng(0).standard_normal((n, m["latent_dim"]), dtype=np.float32)}
    if m.get("num_classes"):
        feeds["y"] = np.eye(m["num_classes"], dtype=np.float32)[np.arange(n) % m["num_classes"]]
    feeds = {i.name: feeds[i.name] for i in s32.get_inputs()}
    diff = float(np.abs(s32.run(None, feeds)[0] - s16.run(None, feeds)[0]).max())
    stats = interleave([Contender("fp32", lambda: s32.run(None, feeds)), Contender("fp16", lambda: s16.run(None, feeds))],
                       n, rounds=rounds, round_s=round_s)
    ratio = spread(np.divide(stats["fp16"]["rounds"], stats["fp32"]["rounds"]).tolist())
    return {"version": m["version"], "n": n, "fp32_samples_per_s": stats["fp32"]["samples_per_s"],
            "fp16_samples_per_s": stats["fp16"]["samples_per_s"], "fp16_vs_fp32": ratio, "fp16_max_abs_diff": diff}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.half_precision", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="gan-mnist,cgan-mnist")
    p.add_argument("--store", type=Path, default=ROOT / "model_store")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--round-s", type=float, default=1.0)
    p.add_argument("--work", type=Path, default=ROOT / "build" / "half_precision")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    out = {"onnxruntime": ort.__version__, "bf16_on_cpu": bf16_kernels(), "models": {}}
    print("| model | n | fp32 samples/s | fp16 samples/s | fp16 / fp32 median [min, max] | fp16 max abs diff |")
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for name in a.models.split(","):
        r = out["models"][name] = measure(a.store, name, a.n, a.rounds, a.round_s, a.work)
        q = r["fp16_vs_fp32"]
        print(f"| {name}@{r['version']} | {a.n} | {r['fp32_samples_per_s']:,.0f} | {r['fp16_samples_per_s']:,.0f} | "
              f"x{q['median']:.2f} [{q['min']:.2f}, {q['max']:.2f}] | {r['fp16_max_abs_diff']:.3g} |")
    print(f"\nbf16 on ONNX Runtime {ort.__version__}'s CPU execution provider: {out['bf16_on_cpu']}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
