"""Which CPU kernels a training run uses, and a pin that keeps a seeded run's bytes the same on other CPUs.

A float sum's last bits depend on the order of its terms, and torch picks kernels by the CPU it runs on: MKL
(the matrix products of every Linear layer: an AVX-512, AVX2, AVX or SSE path, on AMD a Zen one, each summing in
its own order), ATen (elementwise ops and reductions: AVX-512, AVX2 or plain C++) and oneDNN (the convolutions,
blocked by the CPU's caches too). One seed therefore trains other bytes on a CPU with another vector unit, and a
GAN's training amplifies one differing bit into visibly different weights within a few hundred steps.

`--cpu-kernels=portable` (training.run) fixes the three choices before torch makes them:
  MKL_CBWR=COMPATIBLE       MKL's conditional numerical reproducibility on its SSE2 path without the
                            approximate rcpps/rsqrtps: the one branch MKL documents as giving the same results
                            on Intel and on other vendors' CPUs (named branches such as AVX2 hold on Intel only)
  ATEN_CPU_CAPABILITY=avx2  ATen's AVX2 kernels, which every x86-64 CPU of the last decade runs
  ONEDNN_MAX_CPU_ISA=AVX2   oneDNN's convolutions no wider than AVX2 (capped, not fixed: see docs/training.md)
`native` (the default) lets each library choose. What a run used is recorded in its manifest
(training.kernels, `describe()`), so two manifests say whether their bytes can be compared.
"""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

import torch

MODES = ("native", "portable")
PINS = {"native": {},
        "portable": {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
# every variable that steers a kernel choice: recorded when set, whatever the mode
KERNEL_VARS = ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")

# MKL's CNR branch numbers (mkl_cbwr_get; the MKL_CBWR_* constants of mkl.h) and its STRICT flag
MKL_BRANCHES = {1: "off", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX",
                10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}
MKL_CBWR_ALL, MKL_CBWR_STRICT = -1, 0x10000


class KernelError(RuntimeError):
    """A pin that torch did not take (set too late in the process, or a CPU without the pinned unit)."""


def _mkl():
    """torch's statically linked MKL (its CNR functions), or None (a torch built without MKL)."""
    if not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        return lib if hasattr(lib, "mkl_serv_cbwr_get") else None
    except OSError:
        return None


def mkl_branch() -> dict[str, str] | None:
    """{"branch": the CNR branch MKL runs now ("off": CNR off, MKL dispatches freely), "auto": the branch MKL
    picks for this CPU}; None without MKL."""
    lib = _mkl()
    if lib is None:
        return None
    mode = lib.mkl_serv_cbwr_get(MKL_CBWR_ALL)  # the branch and the STRICT flag
    branch = MKL_BRANCHES.get(mode & 0xFFFF, str(mode & 0xFFFF)) + (",STRICT" if mode & MKL_CBWR_STRICT else "")
    auto = lib.mkl_serv_cbwr_get_auto_branch()
    return {"branch": branch, "auto": MKL_BRANCHES.get(auto, str(auto))}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    """The manifest's training.kernels: the CPU, what each library dispatches to, the pins in force."""
    mkl = mkl_branch()
    return {"cpu": cpu_model(), "aten": torch.backends.cpu.get_cpu_capability(),
            "mkl": mkl["branch"] if mkl else "absent", "mkl_auto": mkl["auto"] if mkl else "absent",
            "pins": {k: os.environ[k] for k in KERNEL_VARS if k in os.environ}, "torch": torch.__version__}


def pin(mode: str) -> dict:
    """Set `mode`'s pins and check that torch took them; returns describe(). torch reads these variables at its
    first kernel call, so this must run before the process trains anything (training.run calls it first)."""
    if mode not in MODES:
        raise ValueError(f"cpu kernels must be one of {MODES}, got {mode!r}")
    os.environ.update(PINS[mode])
    got = describe()
    want_mkl, want_aten = PINS[mode].get("MKL_CBWR"), PINS[mode].get("ATEN_CPU_CAPABILITY")
    wrong = []
    if want_mkl and got["mkl"] not in ("absent", want_mkl):
        wrong.append(f"MKL runs {got['mkl']}, not {want_mkl}")
    if want_aten and got["aten"].lower() != want_aten:
        wrong.append(f"ATen runs {got['aten']}, not {want_aten}")
    if wrong:
        env = " ".join(f"{k}={v}" for k, v in PINS[mode].items())
        raise KernelError(f"--cpu-kernels={mode} came too late or is not supported on this CPU "
                           f"({'; '.join(wrong)}): start a fresh process with {env}")
    return got
