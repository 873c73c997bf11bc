"""Tables (markdown) and the performance target checks from a benchmark result (the JSON written by
`python -m bench`, keys as strings). `python -m bench.report result.json` prints them again."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NATIVE = " [native]"  # label suffix: measured with h2load (gRPC) or wrk (HTTP), bench/native.py, not the Python client
CLIENTS = (("", "Python client"), (NATIVE, "native client"))
ENGINES = ("ort/t1", "ort/t2", "ort/2x1", "torch-eager/t1", "torch-eager/t2", "torch-compile/t1", "torch-compile/t2")


def _f(x, fmt="{:,.0f}") -> str:
    return "—" if x is None else fmt.format(x)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _lat(r: dict | None) -> str:
    if r is None:
        return "—"
    if "p50_ms" not in r:
        return "error: " + (r or {}).get("error", "not run")[:60]
    return f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}"


def inprocess_best(model: dict, batches=None) -> tuple[float, str, str]:
    """(samples/s, engine, batch) of the fastest in-process contender over the given batch sizes."""
    best = (0.0, "", "")
    for b, stats in model["inprocess"]["batches"].items():
        if batches and b not in batches:
            continue
        for eng, s in stats.items():
            if s["samples_per_s"] > best[0]:
                best = (s["samples_per_s"], eng, b)
    return best


def stream_ceiling(res: dict) -> tuple[float, str]:
    """The in-process ceiling a SampleStream job is judged against, and where it came from: the best of the
    in-process rates measured at the stream's chunk size around the stream and the best rate of the primary
    model in section A (any engine, batch, threads). A 4096-row batch runs out of cache on this machine and
    is slower than batch 64-256, so the chunk-size figure alone would flatter the stream."""
    st = res["servers"]["stream"]
    chunk = max(v for v in [*st["ceiling_before"].values(), *st["ceiling_after"].values()] if v)
    best, eng, b = inprocess_best(res["models"][res["primary"]])
    if best > chunk:
        return best, f"section A best, {eng} b{b}"
    return chunk, f"in-process at the chunk size {st['chunk']}"


def _ort_best(model: dict, batch: str) -> float:
    stats = model["inprocess"]["batches"].get(batch, {})
    return max((s["samples_per_s"] for e, s in stats.items() if e.startswith("ort/")), default=0.0)


def targets(res: dict) -> list[dict]:
    """The performance targets, each as {target, measured, met} (met None when it could not be measured)."""
    out = []
    srv = res.get("servers", {})

    def add(target, measured, met):
        out.append({"target": target, "measured": measured, "met": met})

    for sfx, who in CLIENTS:
        _client_targets(res, sfx, who, add)
    st = srv.get("stream", {})
    ceil, where = stream_ceiling(res) if st.get("results") else (0.0, "")
    for enc, r in st.get("results", {}).items():
        if "samples_per_s" not in r:
            continue
        add(f"batch job (SampleStream {st['n']:,} samples, {enc}) >= 90% of the in-process ceiling",
            f"{r['samples_per_s']:,.0f} vs {ceil:,.0f} samples/s ({where}) = {r['samples_per_s'] / ceil:.0%}",
            r["samples_per_s"] >= 0.9 * ceil)
    for name, m in res["models"].items():
        b = m["inprocess"]["batches"]
        picks = []
        for batch in ("1", "256"):
            if batch in b:
                ort = max((s["samples_per_s"] for e, s in b[batch].items() if e.startswith("ort")), default=0)
                tor = max((s["samples_per_s"] for e, s in b[batch].items() if e.startswith("torch")), default=0)
                picks.append(f"b{batch}: ORT {ort:,.0f} vs torch {tor:,.0f}/s -> {'ORT' if ort >= tor else 'torch'}")
        if picks:
            add(f"engine choice for {name}", "; ".join(picks), None)
    return out


def _client_targets(res: dict, sfx: str, who: str, add) -> None:
    """The targets measured through one client (label suffix `sfx`); none when that client did not run."""
    srv = res.get("servers", {})
    prim = res["models"][res["primary"]]
    gs, on, off, echo_k, ts, ts_off, ts_on = (k + sfx for k in ("ganserve", "ganserve/on", "ganserve/off", "grpc-echo",
                                                                "torchserve", "torchserve/off", "torchserve/on"))
    lat = srv.get("latency", {})
    r256 = lat.get("256", {})
    if gs in r256 and "samples_per_s" in r256[gs]:
        ref = max(v.get("samples_per_s", 0) for k, v in r256.items() if k.startswith("inproc/"))
        got = r256[gs]["samples_per_s"]
        add(f"[{who}] n=256 request: server >= 90% of in-process ORT at batch 256",
            f"{got:,.0f} vs {ref:,.0f} samples/s in-process (same rounds) = {got / ref:.0%}", got >= 0.9 * ref)
    r1 = lat.get("1", {})
    if gs in r1 and "p50_ms" in r1[gs]:
        ref = min(v.get("p50_ms", 1e9) for k, v in r1.items() if k.startswith("inproc/"))
        g = r1[gs]
        add(f"[{who}] n=1, one client: p50 within 1 ms of in-process, p99 <= 10 ms",
            f"p50 {g['p50_ms']:.2f} ms vs {ref:.2f} ms in-process (+{g['p50_ms'] - ref:.2f} ms), p99 {g['p99_ms']:.2f} ms",
            g["p50_ms"] - ref <= 1.0 and g["p99_ms"] <= 10.0)
    tp = srv.get("throughput", {})
    c32 = tp.get("32", {})
    variant = res.get("variant", {})
    servers = [("ganserve/on", ""),
               ("ganserve-variant/on", f" (variant: {variant.get('args') or variant.get('patches')})")]
    for key, note in servers:
        if key + sfx not in c32 or "samples_per_s" not in c32[key + sfx]:
            continue
        ref = max(v.get("samples_per_s", 0) for k, v in c32.items() if k.startswith("inproc-b64/"))
        best_a, eng, b = inprocess_best(prim)
        ref_note = f"in-process batch 64 in the same rounds {ref:,.0f}/s (section A best: {best_a:,.0f}/s, {eng} b{b})"
        g = c32[key + sfx]
        add(f"[{who}] 32 single-sample clients: >= 60% of in-process best samples/s, p99 <= 50 ms{note}",
            f"{g['samples_per_s']:,.0f}/s = {g['samples_per_s'] / ref:.0%} of {ref_note}; p99 {g['p99_ms']:.1f} ms; "
            f"load generator used {g['load_cpu_cores']:.2f} cores",
            g["samples_per_s"] >= 0.6 * ref and g["p99_ms"] <= 50)
    echo = [(c, r[on]["samples_per_s"], r[echo_k]["samples_per_s"]) for c, r in tp.items()
            if "samples_per_s" in r.get(on, {}) and "samples_per_s" in r.get(echo_k, {})]
    if echo:
        add(f"[{who}] context: ganserve (batching on) as a share of the bare Python gRPC ceiling (bench/echo.py)",
            "; ".join(f"c={c}: {a:,.0f} vs {b:,.0f}/s = {a / b:.0%}" for c, a, b in echo), None)
    worse = [(c, r[on]["samples_per_s"], r[off]["samples_per_s"]) for c, r in tp.items()
             if "samples_per_s" in r.get(on, {}) and "samples_per_s" in r.get(off, {})]
    if worse:
        bad = [f"c={c}: on {a:,.0f} < off {b:,.0f}" for c, a, b in worse if a < 0.95 * b]
        add(f"[{who}] batching on never worse than off (5% noise allowance)",
            "; ".join(f"c={c} {a / b:.2f}x" for c, a, b in worse) + ("" if not bad else " — worse: " + ", ".join(bad)),
            not bad)
    gains = []
    for name, r in srv.get("batching_by_model", {}).items():
        m = res["models"].get(name)
        if not m or "samples_per_s" not in r.get("on" + sfx, {}) or "samples_per_s" not in r.get("off" + sfx, {}):
            continue
        curve = _ort_best(m, "64") / max(_ort_best(m, "1"), 1e-9)
        gain = r["on" + sfx]["samples_per_s"] / r["off" + sfx]["samples_per_s"]
        gains.append(f"{name}: in-process b64/b1 {curve:.2f}x, server on/off {gain:.2f}x")
    if gains:
        add(f"[{who}] batching gain follows each model's per-sample cost curve", "; ".join(gains), None)
    ts_rows = [(c, r) for c, r in tp.items() if "samples_per_s" in r.get(ts_off, {})]
    if ts_rows:
        # The old 3x-unbatched / 1.6x-batched ratios were set against a TorchServe measured with a slow
        # client and are retired (1.6x its batched rate would exceed the model's in-process rate); the target is
        # to stay ahead of it at every concurrency, and the in-process ceiling is the yardstick.
        for key, note in servers:
            if not any("samples_per_s" in r.get(key + sfx, {}) for _, r in ts_rows):
                continue
            parts, ok = [], True
            for c, r in ts_rows:
                g = r.get(key + sfx, {}).get("samples_per_s", 0)
                a = r[ts_off]["samples_per_s"]
                b = r.get(ts_on, {}).get("samples_per_s", float("nan"))
                parts.append(f"c={c}: {g / a:.2f}x unbatched, {g / b:.2f}x batched")
                ok = ok and g >= a and not g < b
            add(f"[{who}] vs TorchServe, same loads: ahead of it at every concurrency, unbatched and batched{note}",
                "; ".join(parts), ok)
        if ts in r1 and "p50_ms" in r1[ts] and gs in r1:
            a, b = r1[gs]["p50_ms"], r1[ts]["p50_ms"]
            add(f"[{who}] vs TorchServe: p50 (n=1) below its p50", f"{a:.2f} ms vs {b:.2f} ms = {a / b:.2f}", a < b)
            go = r1.get("grpc-go-echo" + sfx, {})
            if "p50_ms" in go:
                model = min(v.get("p50_ms", 1e9) for k, v in r1.items() if k.startswith("inproc/"))
                add(f"[{who}] context: the least any server could answer n=1 in (bare grpc-go echo p50 + in-process "
                    f"p50 of one sample)", f"{go['p50_ms']:.2f} + {model:.2f} = {go['p50_ms'] + model:.2f} ms against "
                    f"TorchServe's p50, {b:.2f} ms", None)


def render(res: dict) -> str:
    mach = res["machine"]
    parts = [f"Machine: {mach.get('cpu') or 'unknown CPU'}, {mach.get('cores')} cores, {mach.get('ram_gb')} GB RAM; "
             f"Python {mach.get('python')}, onnxruntime {mach.get('onnxruntime')}, torch {mach.get('torch', '—')}, "
             f"grpcio {mach.get('grpc', '—')}, TorchServe {mach.get('ts', '—')}. Load average at start "
             f"{', '.join(f'{x:.1f}' for x in mach.get('load_avg_at_start', []))}, at end "
             f"{', '.join(f'{x:.1f}' for x in mach.get('load_avg_at_end', []))}. "
             f"{'Quick' if res.get('quick') else 'Full'} run, {res.get('wall_s', 0):.0f} s"
             f"{' (PARTIAL: interrupted, sections below are those completed)' if res.get('partial') else ''}."]
    sections = {**res.get("section_s", {}), **res.get("servers", {}).get("section_s", {})}
    if sections:
        parts[0] += " Seconds per section: " + ", ".join(f"{k} {v:.0f}" for k, v in sections.items()) + "."

    for name, m in res["models"].items():
        ip = m["inprocess"]
        engines = [e for e in ENGINES if any(e in s for s in ip["batches"].values())]
        rows = []
        for b, stats in ip["batches"].items():
            best = max(stats, key=lambda e: stats[e]["samples_per_s"])
            rows.append([b, *(_f(stats[e]["samples_per_s"]) if e in stats else "—" for e in engines),
                         f"{stats[best]['gflops']:.1f} ({best})", f"{stats[best]['p50_ms']:.2f}"])
        torch_note = ip.get("torch", {})
        note = ""
        if "error" in torch_note:
            note = f" torch not measured: {torch_note['error']}."
        elif "compile_error" in torch_note:
            note = f" torch.compile failed: {torch_note['compile_error']}."
        elif torch_note.get("compile_s"):
            note = (" torch.compile (inductor) compile+first-call seconds per batch size: "
                    + ", ".join(f"b{b} {s:.0f}" for b, s in torch_note["compile_s"].items()) + ".")
        elif not any(e.startswith("torch-compile") for e in engines):
            note = " torch.compile not run (--quick or --no-compile; it compiles for ~45 s per model here)."
        parts.append(f"### In-process: {name} ({m['kind']}, v{m['version']}) — {ip['flops_per_sample'] / 1e6:.1f} "
                     f"MFLOP/sample counted, {ip['params'] / 1e6:.2f} M parameters; samples/s\n\n"
                     + _table(["batch", *engines, "best GFLOP/s", "best p50 ms/call"], rows)
                     + (f"\n\ntorch max |diff| vs ORT: {torch_note['max_abs_diff_vs_ort']:.1e}."
                        if "max_abs_diff_vs_ort" in torch_note else "") + note)

    srv = res.get("servers")
    if srv:
        prim = res["primary"]
        variant = res.get("variant")
        for sfx, who in CLIENTS:
            if not any("ganserve" + sfx in r for r in srv.get("latency", {}).values()):
                continue
            rows = []
            for n, r in srv.get("latency", {}).items():
                rows.append([n, *(_lat(r.get(k)) for k in ("inproc/t1", "inproc/t2", "inproc/2x1")),
                             *(_lat(r.get(k + sfx)) for k in ("ganserve", "grpc-echo", "grpc-go-echo", "torchserve")),
                             _f(r.get("ganserve" + sfx, {}).get("samples_per_s")),
                             _f(r.get("torchserve" + sfx, {}).get("samples_per_s"))]
                            + ([_lat(r.get("ganserve-variant" + sfx)),
                                _f(r.get("ganserve-variant" + sfx, {}).get("samples_per_s"))] if variant else []))
            parts.append(f"### Latency, one client ({prim}, {who}); p50 / p99 ms\n\n" + _table(
                ["n", "in-process ORT t1", "in-process ORT t2", "in-process ORT 2x1", "ganserve gRPC",
                 "bare gRPC echo (no model)", "bare grpc-go echo", "TorchServe HTTP",
                 "ganserve samples/s", "TorchServe samples/s"]
                + (["ganserve variant", "(its samples/s)"] if variant else []), rows))
        if variant:
            parts[-1] += (f"\n\nganserve variant (not the shipped server): patches {variant['patches']} "
                          f"(bench/variants.py), flags `{variant.get('args') or 'the same'}`; same samples as the "
                          f"shipped server: {variant['same_samples_as_stock']}.")
        rows = []
        for c, r in srv.get("throughput", {}).items():
            servers = ("ganserve/off", "ganserve/on", "ganserve-variant/on", "grpc-echo", "grpc-go-echo",
                       "torchserve/off", "torchserve/on")
            for k in (*servers, *(k + NATIVE for k in servers), "inproc-b64/t1", "inproc-b64/t2", "inproc-b64/2x1"):
                if k not in r:
                    continue
                x = r[k]
                if "samples_per_s" not in x:
                    rows.append([c, k, "error: " + x.get("error", "")[:80], "", "", "", "", ""])
                    continue
                rows.append([c, k, _f(x["samples_per_s"]), _lat(x), f"{x['load_cpu_cores']:.2f}",
                             _f(x.get("server_cpu_cores"), "{:.2f}"), _f(x.get("server_cpu_ms_per_req"), "{:.2f}"),
                             str(x.get("errors", 0))])
        parts.append(f"### Single-sample requests vs concurrency ({prim})\n\n" + _table(
            ["clients", "server", "samples/s", "p50 / p99 ms", "load-gen CPU cores", "server CPU cores",
             "server CPU ms/request", "errors"],
            rows) + "\n\ninproc-b64 rows: in-process ONNX Runtime at batch 64, interleaved with the c=32 rounds "
                    "(the reference of the 60% target). grpc-echo: bench/echo.py, a Python gRPC server answering "
                    "with prebuilt replies of the same size (no model): the most any Python gRPC server reaches "
                    "under the same load generator; grpc-go-echo: bench/goecho.py, the same in grpc-go. Rows marked [native]: the same rounds driven by h2load (gRPC) or wrk "
                    "(HTTP; bench/native.py, C clients) instead of the Python client.")
        rows = [[enc, _lat(r), _f(r.get("samples_per_s")), _f(r.get("bytes_per_response"))]
                for enc, r in srv.get("encoding", {}).items()]
        parts.append("### Encodings (ganserve, n=64, one client)\n\n" + _table(
            ["encoding", "p50 / p99 ms", "samples/s", "bytes/response"], rows))
        rows = []
        for name, r in srv.get("batching_by_model", {}).items():
            m = res["models"][name]
            o1, o64 = _ort_best(m, "1"), _ort_best(m, "64")
            row = [name, _f(o1), _f(o64), f"{o64 / max(o1, 1e-9):.2f}x"]
            for sfx, _ in CLIENTS:
                on, off = r.get("on" + sfx, {}).get("samples_per_s"), r.get("off" + sfx, {}).get("samples_per_s")
                row += [_f(off), _f(on), f"{on / off:.2f}x" if on and off else "—"]
            rows.append(row)
        parts.append("### Batching gain by model (32 single-sample clients) vs in-process batch curve\n\n" + _table(
            ["model", "in-process b1/s", "in-process b64/s", "b64/b1", "server off/s", "server on/s", "on/off",
             "[native] off/s", "[native] on/s", "[native] on/off"], rows))
        st = srv.get("stream", {})
        rows = []
        ceil, where = stream_ceiling(res) if st.get("results") else (0.0, "")
        for enc, r in st.get("results", {}).items():
            rows.append([enc, _f(r.get("samples_per_s")), _f(ceil),
                         f"{r['samples_per_s'] / ceil:.0%}" if "samples_per_s" in r else r.get("error", ""),
                         f"{r.get('wall_s', 0):.0f}", _f(r.get("load_cpu_cores"), "{:.2f}"),
                         _f(r.get("server_cpu_cores"), "{:.2f}")])
        if rows:
            cb, ca = st["ceiling_before"], st["ceiling_after"]
            parts.append(f"### SampleStream job ({st['n']:,} samples, chunk {st['chunk']})\n\n" + _table(
                ["encoding", "samples/s", "in-process ceiling/s", "ratio", "wall s", "client CPU cores",
                 "server CPU cores"], rows)
                + f"\n\nCeiling = the best in-process rate: {where}. In-process ORT at the chunk size, best of 1 "
                  "thread, 2 threads and 2x1, measured just before "
                  f"({', '.join(f't{t} {_f(v)}' for t, v in cb.items())}) and after "
                  f"({', '.join(f't{t} {_f(v)}' for t, v in ca.items())}) the stream; section A's best of any "
                  f"engine, batch and threads: {_f(inprocess_best(res['models'][res['primary']])[0])}.")
        if "rss_after_load_mb" not in srv:
            return "\n\n".join(parts + _target_part(res))
        rss = [["ganserve (batching on)", _f(srv["rss_after_warmup_mb"]["on"]), _f(srv["rss_after_load_mb"]["on"])],
               ["ganserve (batching off)", _f(srv["rss_after_warmup_mb"]["off"]), _f(srv["rss_after_load_mb"]["off"])]]
        if "torchserve_rss_after_warmup_mb" in srv:
            rss.append(["TorchServe (JVM + workers, both registrations)", _f(srv["torchserve_rss_after_warmup_mb"]),
                        _f(srv.get("torchserve_rss_after_load_mb"))])
        parts.append("### Memory (RSS, MB)\n\n" + _table(["process", "after warm-up", "after load"], rss))
    return "\n\n".join(parts + _target_part(res))


def _target_part(res: dict) -> list[str]:
    parts = []
    if res.get("torchserve_error"):
        parts.append(f"TorchServe not measured: {res['torchserve_error']}")
    if res.get("targets"):
        rows = [[t["target"], t["measured"], {True: "met", False: "MISSED", None: "(info)"}[t["met"]]]
                for t in res["targets"]]
        parts.append("### Targets\n\n" + _table(["target", "measured (same run)", ""], rows))
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("result", type=Path, help="the JSON a `python -m bench --json FILE` run wrote")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.result.read_text())
    except (OSError, ValueError) as e:
        print(f"error: {args.result}: {e}", file=sys.stderr)
        return 1
    data["targets"] = targets(data)
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
