"""What BOMP-NAS's weight widths cost on this CPU: whole subnets at uniform W8/W6/W4 (INT8 activations) and
FP32, built as the compiler builds them, timed on ONNX Runtime and OpenVINO (f32 pinned) and TVM.

For ``--archs`` random architectures of ``bomp-mbv2-tiny`` (random weights: only latency matters), each
uniform policy is exported and quantized by ``policy_qdq`` (Intel Neural Compressor's INT8 QDQ, then
``SubByteWeights``' re-storing: 4-bit weights packed as INT4, 6-bit ones as INT8 values in range), so the
models are the ones an artifact of that policy contains. Per runtime, every model is timed interleaved
(batch 1, one thread) in each of ``--runs`` runs; a cell is the median over runs of the per-architecture
median of the ratio of p10 latencies to W8A8 (or to FP32), with the runs' [min-max]. Writes
``subbyte_cpu_latency.json`` and ``.png`` to ``--out``.

    python benchmarks/subbyte_cpu_latency.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

POLICIES = {"fp32": (32, 32), "w8a8": (8, 8), "w6a8": (6, 8), "w4a8": (4, 8)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--archs", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--backends", nargs="+", default=["ort", "openvino", "tvm"])
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()

    from bitnas.backends import get_backend
    from bitnas.backends.base import interleaved_samples
    from bitnas.fingerprint import has_vnni
    from bitnas.io import atomic_write_bytes, atomic_write_json
    from bitnas.latency_luts.validate import build_subnet_model
    from bitnas.passes.export_onnx import INPUT_NAME
    from bitnas.supernets.families import build_supernet, input_shape

    t0 = time.time()
    net = build_supernet("bomp-mbv2-tiny", "mbv2", 1, 32, 10)
    rng = np.random.default_rng(args.seed)
    shape = input_shape(net)
    work = Path(tempfile.mkdtemp(prefix="bitnas-subbyte-"))
    models = {}  # (arch index, policy) -> path
    fp32_net = build_supernet("mbv2-tiny", "mbv2", 1, 32, 10)  # the same architecture genes with a float option
    for i in range(args.archs):
        arch = net.space.sample(rng).arch_dict
        for name, bits in POLICIES.items():
            sn = fp32_net if bits == (32, 32) else net
            c = sn.space.make(arch, {g.name: bits for g in sn.space.policy_genes})
            models[(i, name)] = build_subnet_model(sn, c, work, not has_vnni(), shape)
        print(f"built architecture {i + 1}/{args.archs}", flush=True)
    sizes = {f"{i}:{p}": os.path.getsize(m) for (i, p), m in models.items()}
    x = {INPUT_NAME: np.random.default_rng(0).normal(0, 1, (1, *shape)).astype(np.float32)}
    results: dict[str, dict] = {}
    for b in args.backends:
        backend = get_backend(b, threads=1)
        per_run = []
        for run in range(args.runs):
            timers = {f"{i}:{p}": backend.timer(m, x) for (i, p), m in models.items()}
            raw = interleaved_samples(timers, 10, args.repeats, args.rounds)
            p10 = {k: float(np.percentile(np.concatenate(v), 10)) * 1e3 for k, v in raw.items()}
            per_run.append(p10)
            print(f"{b} run {run + 1}/{args.runs}", flush=True)
        cells = {}
        for p in POLICIES:
            for ref in ("w8a8", "fp32"):
                vals = [float(np.median([r[f"{i}:{p}"] / r[f"{i}:{ref}"] for i in range(args.archs)])) for r in per_run]
                cells[f"{p}/{ref}"] = {"median": float(np.median(vals)), "min": min(vals), "max": max(vals)}
        ms = {p: float(np.median([np.median([r[f"{i}:{p}"] for i in range(args.archs)]) for r in per_run]))
              for p in POLICIES}
        results[b] = {"ratios": cells, "median_ms": ms, "runs": per_run}
        print(b, {k: round(v["median"], 2) for k, v in cells.items() if k.endswith("w8a8")}, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "command": " ".join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "space": "bomp-mbv2-tiny (FP32: the same architectures in mbv2-tiny)", "input": [1, *shape],
        "statistic": "p10 per model; cell: median over runs of the median over architectures of the ratio",
        "openvino": "f32 pinned (INFERENCE_PRECISION_HINT)", "threads": 1, "batch": 1,
        "reduce_range": not has_vnni(), "archs": args.archs, "runs": args.runs, "repeats": args.repeats,
        "rounds": args.rounds, "bytes_on_disk": sizes, "results": results, "wall_time_s": time.time() - t0,
        "loadavg_at_end": os.getloadavg()[0],
    }
    atomic_write_json(out / "subbyte_cpu_latency.json", summary)
    atomic_write_bytes(out / "subbyte_cpu_latency.png", plot(results))
    print(f"wrote {out / 'subbyte_cpu_latency.json'} ({summary['wall_time_s']:.0f} s)")
    return 0


def plot(results: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bitnas.plots import figure_png

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    names = list(POLICIES)
    width = 0.8 / len(results)
    for k, (b, r) in enumerate(results.items()):
        med = [r["ratios"][f"{p}/w8a8"]["median"] for p in names]
        lo = [m - r["ratios"][f"{p}/w8a8"]["min"] for p, m in zip(names, med)]
        hi = [r["ratios"][f"{p}/w8a8"]["max"] - m for p, m in zip(names, med)]
        ax.bar(np.arange(len(names)) + k * width, med, width, yerr=[lo, hi], label=b, capsize=3)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(names)) + width * (len(results) - 1) / 2, [n.upper() for n in names])
    ax.set_ylabel("latency / W8A8 (p10)")
    ax.set_title("bomp-mbv2-tiny subnets, batch 1, 1 thread (min-max over runs)")
    ax.legend()
    return figure_png(fig)


if __name__ == "__main__":
    sys.exit(main())
