"""EdMIPS reproduction: mixed precision found by EdMIPS against uniform precision at equal BitOps.

EdMIPS's claim (Cai and Vasconcelos, CVPR 2020, sec. 5.4 and Fig. 5): the mixed-precision networks it finds
beat the uniform ones of the same BitOps; at the BitOps of the uniform 2-bit model (the middle of their
W{1,2,3,4} x A{2,3,4} space), by 0.8 to 2.8 top-1 points on ImageNet across five networks.

Here, on one architecture (the largest) of a ``bitfusion-mbv2-tiny`` supernet (W/A {2, 4, 8} per layer)
trained on the digits at small images (``--image-size``, float sandwich training, the project's recipe):

- mixed arm: bitnas's EdMIPS searcher (``cost: bitops``, the alternating weight training of its
  ``weight_steps``/``lr_weights`` options, winner-take-all) sweeps ``--etas`` once per search seed, each
  sweep giving one policy per eta;
- uniform arm: every uniform policy of the same bit set (W2A2 ... W8A8, all layers alike).

Every policy of either arm is measured the same way, from the same inherited supernet weights (BatchNorm
recalibrated on the same batches): (a) ``qaft``: ``--qaft-epochs`` of quantization-aware fine-tuning at the
policy's bits on the train split (the project's ``search.evaluation: qaft``, its default settings), then
top-1 of the simulated-quantization net on the val split; (b) ``ptq``: top-1 of the simulated
post-training-quantized net without fine-tuning (``search.evaluation: simulated``). The weights EdMIPS
trains inside its sweep are dropped (the searcher's proxy), as in the search.

For each search seed, the mixed points (BitOps, accuracy) sorted by BitOps are interpolated linearly at each
uniform policy's BitOps (only inside the range the seed's mixed points span); ``delta`` = mixed minus
uniform, in top-1 points. Nothing is selected by accuracy: every eta's policy counts.
Writes ``repro_edmips.json`` and ``repro_edmips.png`` to ``--out``.

    python benchmarks/repro_edmips.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import platform
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bitnas.io import atomic_write_bytes, atomic_write_json

SPACE = "bitfusion-mbv2-tiny"
PAPER = {
    "claim": "EdMIPS's mixed-precision networks beat uniform low-precision ones of equal BitOps; the gain is "
             "small near the space's extremes and largest in between",
    "source": "Cai and Vasconcelos, Rethinking Differentiable Search for Mixed-Precision Neural Networks "
              "(EdMIPS), CVPR 2020, sec. 5.4, Fig. 5",
    "setting": "ImageNet; W{1,2,3,4} x A{2,3,4} (eq. 17); every network trained from scratch (50 epochs) after "
               "the search; uniform baseline HWGQ-Net",
    "figure": "at the BitOps of uniform 2-bit: +0.9 (AlexNet), +0.8 (ResNet-18), +2.8 (GoogLeNet), +1.5 "
              "(ResNet-50), +1.7 (Inception-V3) top-1 points",
    "figure_points": {"AlexNet": 0.9, "ResNet-18": 0.8, "GoogLeNet": 2.8, "ResNet-50": 1.5, "Inception-V3": 1.7},
    "also": "sec. 5.6: no gain over uniform with a coarser space (W{1,4} x A{2,4})",
}


def bitops(net, cand) -> float:
    """GBitOps of ``cand``: MACs x w_bits x a_bits over its layers / 1e9 (the ``bitops`` objective)."""
    return float(sum(s.macs * s.w_bits * s.a_bits for s in net.layers(cand))) / 1e9


def measure(net, data, cand, calib, qaft_epochs: int, qaft_lr: float, seed: int) -> dict[str, float]:
    """Both arms' measurement: PTQ and QAFT top-1 on the val split, from the inherited weights."""
    from bitnas.passes.qaft import qaft_finetune
    from bitnas.supernets.evaluate import accuracy, prepare_subnet
    from bitnas.supernets.static import quantize_net

    policy = cand.policy_dict
    static = prepare_subnet(net, cand, calib)
    ptq = accuracy(quantize_net(static, policy, calib), data)
    q = qaft_finetune(static, policy, data, qaft_epochs, qaft_lr, calib=calib, seed=seed)
    return {"ptq": ptq, "qaft": accuracy(q, data)}


def curve(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) sorted by x, equal x averaged."""
    xs = sorted({p[0] for p in points})
    return np.array(xs), np.array([np.mean([p[1] for p in points if p[0] == x]) for x in xs])


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    xs, ys = curve(points)
    if len(xs) == 0 or x < xs[0] - 1e-15 or x > xs[-1] + 1e-15:
        return None
    return float(np.interp(x, xs, ys))


def compare(label: str, gbitops: float, acc: float, mixed, seeds, metric: str) -> dict:
    """The mixed curve of each search seed interpolated at ``gbitops``, against ``acc``."""
    per_seed = [interpolate([(m["gbitops"], m[metric]) for m in mixed if m["search_seed"] == s], gbitops)
                for s in seeds]
    got = [v for v in per_seed if v is not None]
    return {"uniform": label, "gbitops": gbitops, "uniform_accuracy": acc, "mixed_interpolated_per_seed": per_seed,
            "mixed_interpolated_mean": float(np.mean(got)) if got else None,
            "delta_points_per_seed": [None if v is None else 100 * (v - acc) for v in per_seed],
            "delta_points_mean": float(np.mean([100 * (v - acc) for v in got])) if got else None,
            "seeds_in_range": len(got)}


def summarize(uniform, mixed, seeds, metric: str) -> dict:
    """Per uniform policy, and per BitOps level against the best uniform policy of that BitOps (W2A8, W4A4
    and W8A2 share one): the mixed curves interpolated there; levels and policies every seed's range covers."""
    rows = [compare(u["label"], u["gbitops"], u[metric], mixed, seeds, metric) for u in uniform]
    levels = []
    for g in sorted({round(u["gbitops"], 12) for u in uniform}):
        same = [u for u in uniform if abs(u["gbitops"] - g) <= 1e-9 * max(g, 1e-12)]
        best = max(same, key=lambda u: u[metric])
        rec = compare(best["label"], best["gbitops"], best[metric], mixed, seeds, metric)
        levels.append({**rec, "best_uniform": best["label"], "uniform": [u["label"] for u in same]})
    inside = [r for r in levels if r["seeds_in_range"] == len(seeds)]
    return {"policies": rows, "levels": levels,
            "mean_delta_vs_best_uniform_inside": float(np.mean([r["delta_points_mean"] for r in inside]))
            if inside else None,
            "levels_inside": [r["best_uniform"] for r in inside],
            "levels_where_mixed_wins": [r["best_uniform"] for r in inside if r["delta_points_mean"] > 0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/repro_edmips", help="project folder (its trained supernet is reused)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=8, help="supernet training epochs")
    ap.add_argument("--seed", type=int, default=0, help="data split, supernet training and measurement seed")
    ap.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
    ap.add_argument("--steps", type=int, default=40, help="alpha/beta steps at the first eta")
    ap.add_argument("--warm-steps", type=int, default=20, help="alpha/beta steps at each later eta")
    ap.add_argument("--weight-steps", type=int, default=1, help="weight steps before each alpha/beta step")
    ap.add_argument("--lr-weights", type=float, default=1e-3)
    ap.add_argument("--qaft-epochs", type=int, default=1)
    ap.add_argument("--qaft-lr", type=float, default=1e-3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    from bitnas.cli import main as cli
    from bitnas.objectives import resolve
    from bitnas.project import Project
    from bitnas.searchers import EdmipsSearcher
    from bitnas.supernets.evaluate import calibration_batches

    work = Path(args.work)
    if not (work / "project.yaml").exists():
        assert cli(["init", str(work), "--space", SPACE, "--target", "bitfusion"]) == 0
        cfg = yaml.safe_load((work / "project.yaml").read_text())
        cfg["seed"] = args.seed
        cfg["train"]["epochs"] = args.epochs
        cfg["data"]["image_size"] = args.image_size
        (work / "project.yaml").write_text(yaml.safe_dump(cfg))
    project = Project.load(work)
    trained_now = not (work / "supernet.pt").exists()
    net = project.supernet().eval()
    data = project.data()
    log(f"supernet {SPACE} ({'trained now' if trained_now else 'reused'}, {project.cfg.train.epochs} epochs, "
        f"{data.image_size}x{data.image_size} digits)")
    calib = calibration_batches(data, 4, 64, args.seed)
    space = net.space
    arch = space.largest().arch_dict
    measured: dict[str, dict] = {}

    def evaluate(cand, arm: str) -> dict:
        if cand.id not in measured:
            m = measure(net, data, cand, calib, args.qaft_epochs, args.qaft_lr, args.seed)
            bits = list(cand.policy_dict.values())
            measured[cand.id] = {"candidate": cand.id, "gbitops": bitops(net, cand),
                                 "effective_bits": float(np.sqrt(bitops(net, cand) * 1e9 /
                                                                 sum(s.macs for s in net.layers(cand)))),
                                 "policy": {k: list(v) for k, v in cand.policy_dict.items()},
                                 "mean_w_bits": float(np.mean([b[0] for b in bits])),
                                 "mean_a_bits": float(np.mean([b[1] for b in bits])), **m}
            r = measured[cand.id]
            log(f"{arm:>7} {cand.id}: {r['gbitops'] * 1e3:8.3f} MBitOps (eff. {r['effective_bits']:.2f} bits) "
                f"qaft {r['qaft']:.4f} ptq {r['ptq']:.4f}")
        return measured[cand.id]

    pairs = sorted({tuple(o) for g in space.policy_genes for o in g.options})
    uniform = []
    for w, a in pairs:
        cand = space.make(arch, {g.name: (w, a) for g in space.policy_genes})
        uniform.append({**evaluate(cand, "uniform"), "label": f"W{w}A{a}"})

    objectives = resolve(["accuracy", "bitops"], "benchmark")
    mixed, sweeps = [], []
    for s_seed in args.search_seeds:
        t = time.time()
        s = EdmipsSearcher(space, objectives, seed=s_seed, supernet=net, data=data, cost="bitops",
                           etas=tuple(args.etas), steps=args.steps, warm_steps=args.warm_steps,
                           lr_weights=args.lr_weights, weight_steps=args.weight_steps, calib_batches=2)
        s.rounds = 1
        cands = s.sweep(arch)
        sweeps.append({"search_seed": s_seed, "seconds": time.time() - t, "history": s.history})
        log(f"sweep seed {s_seed}: {len({c.id for c in cands})} distinct policies over {len(cands)} etas "
            f"({time.time() - t:.0f}s)")
        for eta, cand, h in zip(s.etas, cands, s.history):
            mixed.append({"search_seed": s_seed, "eta": eta, "expected_relative_bitops": h["relative_cost"],
                          **evaluate(cand, "mixed")})

    summary = {metric: summarize(uniform, mixed, args.search_seeds, metric) for metric in ("qaft", "ptq")}
    lv = next((r for r in summary["qaft"]["levels"] if "W4A4" in r["uniform"]), None)
    mean_in = summary["qaft"]["mean_delta_vs_best_uniform_inside"]
    headline = (f"EdMIPS mixed minus best uniform at equal BitOps (QAFT {args.qaft_epochs} ep, digits "
                f"{data.image_size}px, {len(args.search_seeds)} search seeds): at W4A4's BitOps "
                + (f"{lv['delta_points_mean']:+.2f}" if lv and lv["delta_points_mean"] is not None
                   else "n/a (outside the mixed range)")
                + " points; mean over the uniform BitOps levels inside the mixed range "
                + (f"{mean_in:+.2f}" if mean_in is not None else "n/a") + " points")
    wall = time.time() - t0
    result = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "seeds": {"data_train_measure": args.seed, "search": args.search_seeds},
        "wall_time_s": wall,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1,
                    "processor": platform.processor() or platform.machine()},
        "setting": {"space": f"{SPACE} (W/A {{2, 4, 8}} per layer, {len(space.policy_genes)} layers)",
                    "architecture": "the space's largest", "arch": arch,
                    "data": f"digits (sklearn), {data.image_size}x{data.image_size}, train "
                            f"{data.count('train')} / val {data.count('val')}",
                    "supernet": f"float sandwich training, {project.cfg.train.epochs} epochs, seed {args.seed} "
                                f"({'trained in this run' if trained_now else 'reused from ' + str(work)})",
                    "edmips": {"cost": "bitops", "etas": args.etas, "steps": args.steps,
                               "warm_steps": args.warm_steps, "weight_steps": args.weight_steps,
                               "lr_weights": args.lr_weights, "lr": 0.1, "batch": 32, "holdout_ratio": 0.5,
                               "discretize": "wta", "training": "alternating"},
                    "measurement": f"both arms alike, from the inherited supernet weights (BN recalibrated on 4 "
                                   f"train batches): qaft = {args.qaft_epochs} epoch(s) of quantization-aware "
                                   f"fine-tuning (SGD lr {args.qaft_lr}, distillation from the float subnet) then "
                                   f"simulated-quantization top-1 on the val split; ptq = simulated "
                                   f"post-training quantization top-1 on the val split, no fine-tuning",
                    "comparison": "per search seed, mixed points sorted by BitOps, linearly interpolated at each "
                                  "uniform policy's BitOps inside their range; delta = mixed - uniform (points). "
                                  "'levels' (the headline) compare with the best uniform policy of each BitOps "
                                  "(W2A8, W4A4, W8A2 share one; W2A4, W4A2 and W4A8, W8A4 too); 'policies' "
                                  "with every uniform policy"},
        "paper": PAPER,
        "bitnas": {"headline": headline, "qaft": summary["qaft"], "ptq": summary["ptq"]},
        "uniform": uniform,
        "mixed": mixed,
        "sweeps": sweeps,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "repro_edmips.json", result)
    atomic_write_bytes(out / "repro_edmips.png", plot(uniform, mixed, args.search_seeds, headline))
    log(headline)
    for metric in ("qaft", "ptq"):
        for r in summary[metric]["levels"]:
            d = r["delta_points_mean"]
            log(f"{metric} {r['gbitops'] * 1e3:7.3f} MBitOps, best uniform {r['best_uniform']:>5} "
                f"{100 * r['uniform_accuracy']:5.1f}%: mixed "
                + (f"{100 * r['mixed_interpolated_mean']:5.1f}%  delta {d:+6.2f}" if d is not None else "n/a"))
    log(f"wrote {out / 'repro_edmips.json'} and {out / 'repro_edmips.png'} (wall {wall:.0f}s)")
    return 0


def plot(uniform, mixed, seeds, headline) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = (("qaft", "after the same short QAFT", None), ("qaft", "after QAFT, zoomed", 80.0),
              ("ptq", "post-training quantization", None))
    for ax, (metric, title, ylo) in zip(axes, panels):
        ax.scatter([u["effective_bits"] for u in uniform], [100 * u[metric] for u in uniform], marker="s", s=40,
                   color="black", zorder=3, label="uniform")
        placed: dict[float, int] = {}
        for u in uniform:
            k = placed.setdefault(round(u["effective_bits"], 6), 0)
            placed[round(u["effective_bits"], 6)] += 1
            if ylo is None or 100 * u[metric] >= ylo:
                ax.annotate(u["label"], (u["effective_bits"], 100 * u[metric]), fontsize=7,
                            xytext=(4, -9 - 8 * k), textcoords="offset points")
        for i, s in enumerate(seeds):
            xs, ys = curve([(m["effective_bits"], m[metric]) for m in mixed if m["search_seed"] == s])
            ax.plot(xs, 100 * ys, "o-", color=colours[(i + 1) % len(colours)], ms=4,
                    label=f"EdMIPS mixed (search seed {s})")
        ax.set_xscale("log", base=2)
        ax.set_xticks([2, 2.83, 4, 5.66, 8])
        ax.set_xticklabels(["2", "2.8", "4", "5.7", "8"])
        if ylo is not None:
            ax.set_ylim(ylo, 100)
        ax.set_xlabel("sqrt(BitOps / MACs)  (W2A2 = 2, W4A4 = 4, W8A8 = 8)")
        ax.set_ylabel("top-1 on val (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(textwrap.fill(headline, 170), fontsize=8)
    fig.tight_layout()
    from bitnas.plots import figure_png

    return figure_png(fig, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
