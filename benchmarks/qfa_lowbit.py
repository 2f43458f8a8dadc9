"""QFA-style low-bit benchmark: a BatchQuant-trained qfa-mbv3 supernet vs post-training min/max quantization.

On the embedded digits data (16x16), a ``qfa-mbv3-tiny`` supernet is first trained in float (the
"full-precision supernet" QFA starts from), then trained quantization-aware with LSQ weights and
BatchQuant activations through QFA's two stages ({2,3,4,32} then {2,3,4}). The same subnets (largest,
smallest and random architectures) are evaluated at uniform W/A 4/4, 3/3 and 2/2:

- ``batchquant``: subnet extracted from the QAT supernet, BatchNorm recalibrated, BatchQuant calibrated;
- ``ptq_minmax``: float subnet (no QAT quantizers) extracted from the float supernet, BatchNorm
  recalibrated, then quantized post training with the same policy (per-channel symmetric max weights,
  per-tensor min/max activations at each layer's input and output, ``quantize_net``).

Writes benchmarks/results/qfa_lowbit.json and .png; checkpoints make a rerun resume. Run:
``python benchmarks/qfa_lowbit.py`` (about 10-20 minutes on 2 shared cores).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch

from bitnas.io import atomic_write_bytes, atomic_write_json
from bitnas.supernets import build_supernet
from bitnas.supernets.data import load_digits
from bitnas.supernets.evaluate import accuracy, calibration_batches, quantized_accuracy
from bitnas.supernets.qat_train import evaluate_subnet, policy_bits, train_qat_supernet, uniform_policy
from bitnas.supernets.static import recalibrate_bn

RESULTS = Path(__file__).resolve().parent / "results"
BITS = (4, 3, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float-epochs", type=int, default=12)
    ap.add_argument("--stage1-epochs", type=int, default=4)
    ap.add_argument("--stage2-epochs", type=int, default=8)
    ap.add_argument("--random-subnets", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "qfa_lowbit.json"))
    ap.add_argument("--work", default="runs/qfa_lowbit", help="checkpoint folder (a rerun resumes from it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = load_digits(image_size=16, seed=args.seed)
    shape = {"in_channels": data.in_channels, "image_size": data.image_size, "num_classes": data.num_classes}

    def log(epoch, epochs, rec):
        print(f"[{time.time() - t0:6.0f}s] epoch {epoch}/{epochs} bits {rec['bits']} loss {rec['loss']:.3f} "
              f"largest {rec['acc_largest']:.3f} smallest {rec['acc_smallest']:.3f}", flush=True)

    torch.manual_seed(args.seed)  # the supernet's initial weights
    fp_net = build_supernet("qfa-mbv3-tiny", "mbv3", **shape)
    fp = train_qat_supernet(fp_net, data, [(args.float_epochs, (32,))], seed=args.seed,
                            checkpoint=work / "float.pt", on_epoch=log)
    qat_net = build_supernet("qfa-mbv3-tiny", "mbv3", **shape)
    qat_net.load_state_dict(fp_net.state_dict())
    low = tuple(b for b in policy_bits(qat_net.space) if b < 32)
    qat = train_qat_supernet(qat_net, data, [(args.stage1_epochs, low + (32,)), (args.stage2_epochs, low)],
                             seed=args.seed, checkpoint=work / "qat.pt", on_epoch=log)
    train_s = time.time() - t0

    space = qat_net.space
    rng = np.random.default_rng(args.seed + 1)
    archs = {"largest": space.largest(), "smallest": space.smallest()}
    for i in range(args.random_subnets):
        archs[f"random{i}"] = space.sample(rng)
    calib = calibration_batches(data, 4, 64, args.seed)
    rows = []
    for label, arch in archs.items():
        fp_static = recalibrate_bn(fp_net.extract(uniform_policy(space, arch, 32), quantizers=False), calib)
        row = {"subnet": label, "arch": arch.to_dict()["arch"], "float": accuracy(fp_static, data)}
        for b in BITS:
            cand = uniform_policy(space, arch, b)
            row[f"batchquant_{b}"] = evaluate_subnet(qat_net, cand, data, calib)
            row[f"ptq_minmax_{b}"] = quantized_accuracy(fp_static, cand.policy_dict, calib, data)
        rows.append(row)
        print(f"{label:10s} float {row['float']:.3f} " + " ".join(
            f"{b}/{b}: bq {row[f'batchquant_{b}']:.3f} ptq {row[f'ptq_minmax_{b}']:.3f}" for b in BITS), flush=True)
    rand = [r for r in rows if r["subnet"].startswith("random")]
    summary = {
        f"{b}/{b}": {
            "largest": {"batchquant": rows[0][f"batchquant_{b}"], "ptq_minmax": rows[0][f"ptq_minmax_{b}"]},
            "smallest": {"batchquant": rows[1][f"batchquant_{b}"], "ptq_minmax": rows[1][f"ptq_minmax_{b}"]},
            "random_mean": {"batchquant": float(np.mean([r[f"batchquant_{b}"] for r in rand])),
                            "ptq_minmax": float(np.mean([r[f"ptq_minmax_{b}"] for r in rand]))},
            "random_batchquant_wins": int(sum(r[f"batchquant_{b}"] > r[f"ptq_minmax_{b}"] for r in rand)),
            "random_subnets": len(rand),
        } for b in BITS
    }
    result = {
        "benchmark": "qfa_lowbit", "data": "sklearn digits 16x16", "space": space.name,
        "space_cardinality": {k: v for k, v in space.cardinality().items() if k.startswith("log10")},
        "schedule": {"float": args.float_epochs, "stage1_bits_2_3_4_32": args.stage1_epochs,
                     "stage2_bits_2_3_4": args.stage2_epochs},
        "float_history": fp["history"], "qat_history": qat["history"], "summary": summary, "subnets": rows,
        "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - t0, 1),
        "threads": args.threads, "seed": args.seed,
    }
    atomic_write_json(out, result)
    plot(summary, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')} in {time.time() - t0:.0f}s")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), sharey=True)
    for ax, which in zip(axes, ("largest", "smallest", "random_mean")):
        xs = np.arange(len(BITS))
        for j, (method, color) in enumerate((("batchquant", "tab:blue"), ("ptq_minmax", "tab:orange"))):
            vals = [summary[f"{b}/{b}"][which][method] for b in BITS]
            ax.bar(xs + (j - 0.5) * 0.38, vals, 0.38, label=method, color=color)
        ax.set_xticks(xs, [f"W/A {b}/{b}" for b in BITS])
        ax.set_title(f"{which.replace('_', ' ')} subnet")
        ax.set_ylim(0, 1.15)
    axes[0].set_ylabel("digits val accuracy")
    axes[0].legend(loc="upper center", ncol=2, fontsize="small")
    fig.suptitle("qfa-mbv3-tiny: BatchQuant supernet vs post-training min/max quantization")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


if __name__ == "__main__":
    main()
