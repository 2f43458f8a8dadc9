"""When does INT8 beat FP32 on this CPU? Whole-network latency ratio INT8/FP32 against batch size.

For the smallest, the largest and a middle architecture of the demo space, the FP32 export and the all-INT8
QDQ artifact (Intel Neural Compressor, the compiler's own passes) are timed interleaved in one run on
ONNX Runtime and OpenVINO, one thread, at several batch sizes; the ratio of their 10th-percentile latencies
is reported. Weights do not affect latency, so the supernet is not trained. The runtimes are the backends of
the measured targets named by ``--targets`` (the target table, ``bitnas targets``).

    python benchmarks/int8_speedup.py --out benchmarks/results [--targets ort-cpu,openvino-cpu]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bitnas.api import TARGETS
from bitnas.backends import interleaved_timing
from bitnas.fingerprint import device_fingerprint
from bitnas.io import atomic_write_json
from bitnas.passes import AssignBitwidths, ExportOnnx, IncStaticPtq
from bitnas.passes.export_onnx import INPUT_NAME
from bitnas.pipeline import PassContext
from bitnas.supernets import build_supernet
from bitnas.supernets.data import load_digits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--targets", default="ort-cpu,openvino-cpu", help="measured targets whose runtimes are timed")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    targets = [TARGETS.get(t.strip(), "--targets") for t in args.targets.split(",")]
    for t in targets:
        if t.simulated:
            raise SystemExit(f"--targets: '{t.name}' is simulated; it has no runtime to time")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = load_digits()
    net = build_supernet("mbv2-tiny").eval()
    space = net.space
    mid = space.make({**space.largest().arch_dict, "s0.depth": 2, "s1.depth": 2, "s2.depth": 2,
                      **{g.name: 4 for g in space.arch_genes if g.name.endswith(".expand")},
                      **{g.name: 5 for g in space.arch_genes if g.name.endswith(".kernel")}})
    archs = {"smallest": space.smallest(), "middle": mid, "largest": space.largest()}
    results = {"fingerprint": device_fingerprint(args.threads), "statistic": "p10", "repeats": args.repeats,
               "threads": args.threads, "targets": [t.name for t in targets], "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for label, arch in archs.items():
            cand = space.make(arch.arch_dict, {g.name: (8, 8) for g in space.policy_genes})
            work = Path(tmp) / label
            work.mkdir()
            ctx = PassContext(workdir=work, inputs={"data": data, "candidate": cand})
            fp32 = ExportOnnx().run(net.extract(cand), ctx)
            int8 = IncStaticPtq().run(AssignBitwidths().run(fp32, ctx), ctx)
            macs = sum(s.macs for s in net.layers(cand))
            for target in targets:
                backend_name = target.backend
                backend = target.make_backend(threads=args.threads)
                q, f = backend.compile(int8.path), backend.compile(fp32.path)
                for b in batches:
                    x = data.head("val", b)[0]
                    feed = {INPUT_NAME: np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])))}
                    t = interleaved_timing({"int8": lambda q=q, feed=feed: q(feed),
                                            "fp32": lambda f=f, feed=feed: f(feed)},
                                           warmup=10, repeats=args.repeats, rounds=10)
                    row = {"arch": label, "macs": macs, "target": target.name, "backend": backend_name, "batch": b,
                           "int8_ms": t["int8"].p10_ms, "fp32_ms": t["fp32"].p10_ms,
                           "ratio_int8_to_fp32": t["int8"].p10_ms / t["fp32"].p10_ms}
                    results["rows"].append(row)
                    print(f"{label:8s} {backend_name:8s} batch {b:4d}  int8 {row['int8_ms']:.4f} ms  "
                          f"fp32 {row['fp32_ms']:.4f} ms  ratio {row['ratio_int8_to_fp32']:.2f}", flush=True)
    atomic_write_json(out / "int8_speedup.json", results)
    plot(results, out / "int8_speedup.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = results["targets"]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, target in zip(axes, names):
        for arch in ("smallest", "middle", "largest"):
            rows = [r for r in results["rows"] if r["target"] == target and r["arch"] == arch]
            ax.plot([r["batch"] for r in rows], [r["ratio_int8_to_fp32"] for r in rows], marker="o", label=arch)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_title(f"{target}, {results['threads']} thread")
        ax.legend()
    axes[0].set_ylabel("latency INT8 / FP32 (p10; < 1 means INT8 faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
