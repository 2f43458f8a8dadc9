"""QAFT ablation: artifact accuracy with and without quantization-aware fine-tuning at 4 bits and below.

For a few architectures of a project's mbv2 space (its trained supernet) and uniform policies W4A8, W3A8 and W2A8, each candidate is
compiled through the real passes (ExtractSubnet, RecalibrateBn, Qaft with 0, 1 and 5 epochs as BOMP-NAS
does in and after its search loop, ExportOnnx, AssignBitwidths, IncStaticPtq, SubByteWeights, Verify on
ONNX Runtime), and the artifact's top-1 accuracy on the val split is recorded next to the float subnet's.

    python benchmarks/qaft_ablation.py --project runs/demo --out benchmarks/results
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bitnas.io import atomic_write_json
from bitnas.passes import (
    AssignBitwidths,
    ExportOnnx,
    ExtractSubnet,
    IncStaticPtq,
    Qaft,
    RecalibrateBn,
    SubByteWeights,
    Verify,
)
from bitnas.pipeline import PassContext, Sequential
from bitnas.project import Project
from bitnas.supernets.mbv2 import MBV2Supernet, mbv2_tiny

BITS = ((4, 8), (3, 8), (2, 8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", default="runs/demo", help="a project.yaml or run folder (e.g. of 'bitnas demo') of "
                                                      "the mbv2 family: its trained supernet and data")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--archs", type=int, default=4, help="architectures: the largest plus random ones")
    ap.add_argument("--epochs", default="0,1,5", help="QAFT epochs to compare")
    args = ap.parse_args()
    epochs = [int(e) for e in args.epochs.split(",")]
    project = Project.load(args.project)
    if project.family.name != "mbv2":
        raise SystemExit(f"--project: {project.source}: the ablation widens an mbv2 space's bits; family "
                         f"'{project.family.name}' is not mbv2")
    trained, data = project.supernet(), project.data()
    d = trained.d
    net = MBV2Supernet(mbv2_tiny(d.in_channels, d.image_size, d.num_classes,
                                 bit_options=((32, 32), (8, 8), *BITS))).eval()
    net.load_state_dict(trained.state_dict())
    rng = np.random.default_rng(0)
    archs = [net.space.largest()] + [net.space.sample(rng) for _ in range(args.archs - 1)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ai, arch in enumerate(archs):
            for bits in BITS:
                cand = net.space.make(arch.arch_dict, {g.name: bits for g in net.space.policy_genes})
                for e in epochs:
                    work = Path(tmp) / f"{ai}-{bits[0]}-{e}"
                    work.mkdir()
                    ctx = PassContext(workdir=work, seed=0, inputs={"supernet": net, "data": data})
                    Sequential([ExtractSubnet(), RecalibrateBn(), Qaft(epochs=e), ExportOnnx(), AssignBitwidths(),
                                IncStaticPtq(), SubByteWeights(),
                                Verify(backends=("ort",), repeats=10, warmup=1, rounds=1)]).run(cand, ctx)
                    m = ctx.results["measured"]["ort"]
                    row = {"arch": ai, "candidate": cand.id, "w_bits": bits[0], "a_bits": bits[1], "qaft_epochs": e,
                           "accuracy": m["accuracy"], "accuracy_fp32": m["accuracy_fp32"],
                           "agreement_vs_fakequant": m.get("top1_agreement_vs_fakequant")}
                    rows.append(row)
                    print(f"arch {ai} W{bits[0]}A{bits[1]} qaft {e} ep: artifact acc {row['accuracy']:.4f} "
                          f"(float {row['accuracy_fp32']:.4f})", flush=True)
    summary = {}
    for bits in BITS:
        for e in epochs:
            accs = [r["accuracy"] for r in rows if r["w_bits"] == bits[0] and r["qaft_epochs"] == e]
            summary[f"W{bits[0]}A{bits[1]}_qaft{e}"] = {"mean": float(np.mean(accs)), "min": float(np.min(accs)),
                                                         "max": float(np.max(accs))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "qaft_ablation.json", {"project": str(args.project), "rows": rows, "summary": summary})
    plot(rows, epochs, out / "qaft_ablation.png")
    for k, v in summary.items():
        print(f"{k}: mean {v['mean']:.4f} (min {v['min']:.4f}, max {v['max']:.4f})")


def plot(rows, epochs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(epochs)
    for i, e in enumerate(epochs):
        means = [np.mean([r["accuracy"] for r in rows if r["w_bits"] == b[0] and r["qaft_epochs"] == e]) * 100
                 for b in BITS]
        ax.bar(np.arange(len(BITS)) + i * width, means, width, label=f"QAFT {e} epoch(s)" if e else "PTQ only")
    fp = np.mean([r["accuracy_fp32"] for r in rows]) * 100
    ax.axhline(fp, color="grey", ls="--", lw=0.8, label="float subnets (mean)")
    ax.set_xticks(np.arange(len(BITS)) + width * (len(epochs) - 1) / 2)
    ax.set_xticklabels([f"W{b[0]}A{b[1]}" for b in BITS])
    ax.set_ylabel("artifact top-1 on val split (%), ONNX Runtime")
    ax.set_title("QAFT ablation (mean over architectures)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
