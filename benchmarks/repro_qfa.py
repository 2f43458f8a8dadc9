"""QFA reproduction: two-stage bit schedule ({2,3,4,32} then {2,3,4}) vs single-stage ({2,3,4} throughout).

Paper (QFA / BatchQuant, Bai et al. 2021, Table 3): starting from the float-pretrained supernet, QAT with a
first stage that mixes in 32-bit layers ({2,3,4,32}, 65 epochs) and a second stage of low bits only
({2,3,4}, 125 epochs) beats training with {2,3,4} for the same 190 epochs. Biggest subnet, ImageNet top-1,
W/A 4/4, 3/3, 2/2: two-stage 75.6 / 74.3 / 68.4 % vs single-stage 74.8 / 73.7 / 66.3 %
(+0.8 / +0.6 / +2.1 points).

Here: a ``qfa-mbv3-tiny`` BatchQuant supernet on the embedded digits (16x16 by default). One float
pretraining (``--float-epochs``, bits {32}) is the common start of every arm; then, for each seed, the same
number of QAT epochs (``--qat-epochs``) from those weights with the same seed (data order, sampled subnets):

- ``two-stage``: ``default_schedule`` (stage 1 = a third of the epochs at {2,3,4,32}, stage 2 at {2,3,4});
- ``single-stage``: ``default_schedule(..., stage1_epochs=0)``, {2,3,4} for all epochs (the paper's baseline;
  one cosine learning-rate cycle, as a single phase gets);
- ``single-stage-restart`` (control): {2,3,4} in both phases of the two-stage split, so the learning rate
  restarts at the same epoch as in ``two-stage`` and only the bits differ.

Every arm and seed is evaluated on the same subnets: largest, smallest and ``--random-archs`` random
architectures, each at uniform W/A 4/4, 3/3, 2/2 and ``--mixed`` random mixed {2,3,4} policies (subnet
extracted, BN recalibrated, BatchQuant calibrated, val top-1). Reported: mean top-1 per bit width per arm
(all subnets, and the largest alone as in the paper's table) and the two-stage minus single-stage difference
per seed. Checkpoints (float, every arm/seed, every finished evaluation) in ``--work`` make a rerun resume.

    python benchmarks/repro_qfa.py          # ~21 minutes on 2 cores shared with other jobs (load ~6)

Writes ``--out`` (benchmarks/results/repro_qfa.json) and the PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bitnas.io import atomic_write_bytes, atomic_write_json
from bitnas.space import Candidate
from bitnas.supernets import build_supernet
from bitnas.supernets.data import load_digits
from bitnas.supernets.evaluate import calibration_batches
from bitnas.supernets.qat_train import (
    default_schedule,
    evaluate_subnet,
    policy_bits,
    restrict,
    train_qat_supernet,
    uniform_policy,
)

RESULTS = Path(__file__).resolve().parent / "results"
BITS = (4, 3, 2)
ARMS = ("two-stage", "single-stage", "single-stage-restart")
PAPER = {
    "claim": "two-stage elastic quantization ({2,3,4,32} then {2,3,4}) beats single-stage ({2,3,4} for the same "
             "epochs) at W/A 4/4, 3/3, 2/2",
    "figure": "Table 3, biggest subnet, ImageNet top-1: two-stage 75.6/74.3/68.4% vs single-stage 74.8/73.7/66.3% "
              "at W/A 4/4/3/3/2/2 (+0.8/+0.6/+2.1 points)",
    "table3": {"two-stage": {"4/4": 75.6, "3/3": 74.3, "2/2": 68.4},
               "single-stage": {"4/4": 74.8, "3/3": 73.7, "2/2": 66.3}},
    "source": "QFA/BatchQuant (Bai et al., NeurIPS 2021), /work/shared/papers/002_8569d7cdf1148333.txt",
}


def schedules(space, qat_epochs: int, stage1_epochs: int | None):
    low = tuple(b for b in policy_bits(space) if b < 32)
    two = default_schedule(space, qat_epochs, 0, stage1_epochs)
    one = default_schedule(space, qat_epochs, 0, 0)
    restart = [(e, low) for e, _ in two]
    return {"two-stage": two, "single-stage": one, "single-stage-restart": restart}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=8)
    ap.add_argument("--float-epochs", type=int, default=12)
    ap.add_argument("--qat-epochs", type=int, default=9, help="QAT epochs of every arm (same for all)")
    ap.add_argument("--stage1-epochs", type=int, default=None, help="two-stage arm's stage 1 (default: a third)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="QAT seeds (data order, sampled subnets)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--random-archs", type=int, default=5)
    ap.add_argument("--mixed", type=int, default=2, help="random mixed {2,3,4} policies per architecture")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "repro_qfa.json"))
    ap.add_argument("--work", default="runs/repro_qfa", help="checkpoint folder (a rerun resumes from it)")
    args = ap.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown or "two-stage" not in arms or "single-stage" not in arms:
        raise SystemExit(f"--arms: needs two-stage and single-stage, known {ARMS}, got {arms}")
    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    data = load_digits(image_size=args.image_size, seed=0)  # one split for every arm and seed
    shape = {"in_channels": data.in_channels, "image_size": data.image_size, "num_classes": data.num_classes}

    def on_epoch(tag):
        def f(epoch, epochs, rec):
            log(f"{tag} epoch {epoch}/{epochs} bits {rec['bits']} loss {rec['loss']:.3f} "
                f"largest {rec['acc_largest']:.3f} smallest {rec['acc_smallest']:.3f} (W/A {rec['eval_bits']})")
        return f

    torch.manual_seed(0)  # the supernet's initial weights
    fp_net = build_supernet("qfa-mbv3-tiny", "mbv3", **shape)
    tf = time.time()
    fp = train_qat_supernet(fp_net, data, [(args.float_epochs, (32,))], seed=0, checkpoint=work / "float.pt",
                            on_epoch=on_epoch("float"))
    float_s = time.time() - tf
    space = fp_net.space
    plans = schedules(space, args.qat_epochs, args.stage1_epochs)

    # the evaluated subnets: fixed once, shared by every arm and seed
    rng = np.random.default_rng(12345)
    archs = {"largest": space.largest(), "smallest": space.smallest()}
    for i in range(args.random_archs):
        archs[f"random{i}"] = space.sample(rng)
    policies: list[tuple[str, str, Candidate]] = []
    for label, arch in archs.items():
        for b in BITS:
            policies.append((label, f"{b}/{b}", uniform_policy(space, arch, b)))
        for j in range(args.mixed):
            policies.append((label, f"mixed{j}", restrict(space, arch, (2, 3, 4), rng)))
    calib = calibration_batches(data, 4, 64, 0)

    runs: dict[tuple[str, int], dict] = {}
    for seed in args.seeds:
        for arm in arms:
            tag = f"{arm} seed {seed}"
            sched = plans[arm]
            done = work / f"eval.{arm}.s{seed}.json"
            net = build_supernet("qfa-mbv3-tiny", "mbv3", **shape)
            net.load_state_dict(fp_net.state_dict())
            ts = time.time()
            hist = train_qat_supernet(net, data, sched, seed=seed, checkpoint=work / f"qat.{arm}.s{seed}.pt",
                                      on_epoch=on_epoch(tag), init=f"float:{fp['fingerprint']}")
            train_s = time.time() - ts
            prev = json.loads(done.read_text()) if done.exists() else {}
            rows = prev.get("rows", {}) if prev.get("fingerprint") == hist["fingerprint"] else {}
            te = time.time()
            for label, pol, cand in policies:
                key = f"{label}|{pol}"
                if key not in rows:
                    rows[key] = evaluate_subnet(net, cand, data, calib)
                    atomic_write_json(done, {"fingerprint": hist["fingerprint"], "rows": rows})
            eval_s = time.time() - te
            runs[(arm, seed)] = {"arm": arm, "seed": seed, "schedule": [[e, list(b)] for e, b in sched],
                                 "fingerprint": hist["fingerprint"], "history": hist["history"], "rows": rows,
                                 "train_seconds_this_invocation": round(train_s, 1),
                                 "eval_seconds_this_invocation": round(eval_s, 1)}
            m = {b: np.mean([rows[f"{lab}|{b}/{b}"] for lab in archs]) for b in BITS}
            log(f"{tag}: mean top-1 " + " ".join(f"{b}/{b} {m[b]:.3f}" for b in BITS) +
                f" mixed {np.mean([v for k, v in rows.items() if '|mixed' in k]):.3f}")

    summary = summarize(runs, arms, args.seeds, list(archs))
    command = " ".join(["python", Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
    timing_path = work / "timings.json"
    timings = json.loads(timing_path.read_text()) if timing_path.exists() else {"invocations": []}
    timings["invocations"].append({"command": command, "wall_seconds": round(time.time() - t0, 1),
                                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    atomic_write_json(timing_path, timings)
    result = {
        "benchmark": "repro_qfa", "command": command, "paper": PAPER, "bitnas": summary["headline"],
        "setup": {"space": space.name, "data": f"sklearn digits {args.image_size}x{args.image_size}",
                  "float_epochs": args.float_epochs, "float_seed": 0, "qat_epochs_per_arm": args.qat_epochs,
                  "schedules": {a: [[e, list(b)] for e, b in plans[a]] for a in arms},
                  "lr": "cosine per phase from 0.05 (train_qat_supernet defaults: SGD, batch 64, n_random 2)",
                  "seeds": args.seeds, "threads": args.threads,
                  "subnets": {k: v.to_dict() for k, v in archs.items()},
                  "policies_per_subnet": ["4/4", "3/3", "2/2"] + [f"mixed{j}" for j in range(args.mixed)],
                  "evaluation": "extract, BN recalibration and BatchQuant calibration on 4 train batches, val top-1 "
                                f"({data.count('val')} images)"},
        "summary": summary, "float_history": fp["history"],
        "runs": list(runs.values()),
        "float_seconds_this_invocation": round(float_s, 1), "wall_seconds": round(time.time() - t0, 1),
        "timings": {"invocations": timings["invocations"],
                    "note": "2 cores shared with other jobs (load average 5-7 during the runs); a rerun resumes "
                            "from the checkpoints in --work, so each invocation's wall time covers only what it "
                            "trained or evaluated"},
    }
    atomic_write_json(out, result)
    atomic_write_bytes(out.with_suffix(".png"), plot(summary, arms))
    log(f"wrote {out} and {out.with_suffix('.png')}")
    for line in summary["headline"]["lines"]:
        print(line)
    return 0


def summarize(runs, arms, seeds, labels) -> dict:
    cols = [f"{b}/{b}" for b in BITS] + ["mixed"]

    def mean(arm, seed, col, only=None):
        rows = runs[(arm, seed)]["rows"]
        keys = [k for k in rows if (k.split("|")[1] == col or (col == "mixed" and "|mixed" in k))
                and (only is None or k.split("|")[0] == only)]
        return float(np.mean([rows[k] for k in keys]))

    out: dict = {"all_subnets": {}, "largest": {}}
    for scope, only in (("all_subnets", None), ("largest", "largest")):
        for col in cols:
            cell = {}
            for arm in arms:
                per = [mean(arm, s, col, only) for s in seeds]
                cell[arm] = {"mean": float(np.mean(per)), "per_seed": per}
            d = [a - b for a, b in zip(cell["two-stage"]["per_seed"], cell["single-stage"]["per_seed"])]
            se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
            cell["two_minus_single"] = {"mean": float(np.mean(d)), "per_seed": d, "standard_error": se,
                                        "two_stage_higher_seeds": f"{sum(x > 0 for x in d)}/{len(d)}"}
            if "single-stage-restart" in arms:
                d2 = [a - b for a, b in zip(cell["two-stage"]["per_seed"], cell["single-stage-restart"]["per_seed"])]
                cell["two_minus_restart_control"] = {"mean": float(np.mean(d2)), "per_seed": d2}
            out[scope][col] = cell
    # paired per-subnet comparison over every (subnet, policy, seed)
    pairs = [(runs[("two-stage", s)]["rows"][k], runs[("single-stage", s)]["rows"][k])
             for s in seeds for k in runs[("two-stage", s)]["rows"]]
    out["paired"] = {"n": len(pairs), "two_stage_higher": sum(a > b for a, b in pairs),
                     "single_stage_higher": sum(a < b for a, b in pairs), "ties": sum(a == b for a, b in pairs),
                     "mean_diff": float(np.mean([a - b for a, b in pairs])),
                     "wilcoxon_p": _wilcoxon([a - b for a, b in pairs])}
    paper = PAPER["table3"]
    lines = []
    for b in BITS:
        c = f"{b}/{b}"
        pa = paper["two-stage"][c] - paper["single-stage"][c]
        al, lg = out["all_subnets"][c], out["largest"][c]
        lines.append(f"W/A {c}: paper (largest, ImageNet) two-stage {paper['two-stage'][c]:.1f} vs single "
                     f"{paper['single-stage'][c]:.1f} ({pa:+.1f} pts); bitnas digits all-subnet mean "
                     f"{100 * al['two-stage']['mean']:.1f} vs {100 * al['single-stage']['mean']:.1f} "
                     f"({_pm(al['two_minus_single'])} pts, two-stage higher in "
                     f"{al['two_minus_single']['two_stage_higher_seeds']} seeds), largest "
                     f"{100 * lg['two-stage']['mean']:.1f} vs {100 * lg['single-stage']['mean']:.1f} "
                     f"({_pm(lg['two_minus_single'])} pts, per seed "
                     f"{', '.join(f'{100 * x:+.1f}' for x in lg['two_minus_single']['per_seed'])})")
    m = out["all_subnets"]["mixed"]
    lines.append(f"mixed {{2,3,4}} policies: two-stage {100 * m['two-stage']['mean']:.1f} vs single "
                 f"{100 * m['single-stage']['mean']:.1f} ({_pm(m['two_minus_single'])} pts)")
    cells = [out["all_subnets"][f"{b}/{b}"]["two_minus_single"] for b in BITS]
    beyond = [c["standard_error"] is not None and c["mean"] > 2 * c["standard_error"] for c in cells]
    p = out["paired"]
    lines.append(f"paired over every (subnet, policy, seed): two-stage higher {p['two_stage_higher']}, single-stage "
                 f"higher {p['single_stage_higher']}, ties {p['ties']}; mean diff {100 * p['mean_diff']:+.2f} pts, "
                 f"Wilcoxon p {p['wilcoxon_p']:.2f}" if p["wilcoxon_p"] is not None else "")
    if all(beyond):
        verdict = "reproduced here: two-stage higher by more than 2 standard errors (over seeds) at every bit width"
    elif any(beyond):
        verdict = "mixed: some bit widths favour two-stage beyond seed noise, others do not"
    elif all(c["mean"] > 0 for c in cells):
        verdict = "not reproduced beyond noise: two-stage mean higher at every bit width, but within seed noise"
    else:
        verdict = "not reproduced here at this scale: differences within seed noise, not all in the paper's direction"
    out["headline"] = {"lines": [x for x in lines if x], "verdict": verdict,
                       "beyond_2_standard_errors": dict(zip([f"{b}/{b}" for b in BITS], beyond))}
    return out


def _pm(cell) -> str:
    se = cell["standard_error"]
    return f"{100 * cell['mean']:+.1f}" + (f" ± {100 * se:.1f} SE" if se is not None else "")


def _wilcoxon(d) -> float | None:
    from scipy.stats import wilcoxon

    d = [x for x in d if x != 0]
    return float(wilcoxon(d).pvalue) if len(d) >= 6 else None


def plot(summary, arms) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [f"{b}/{b}" for b in BITS] + ["mixed"]
    colours = {"two-stage": "tab:red", "single-stage": "tab:blue", "single-stage-restart": "tab:gray"}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    w = 0.8 / len(arms)
    for ax, scope in zip(axes[:2], ("all_subnets", "largest")):
        xs = np.arange(len(cols))
        for j, arm in enumerate(arms):
            vals = [100 * summary[scope][c][arm]["mean"] for c in cols]
            ax.bar(xs + (j - (len(arms) - 1) / 2) * w, vals, w, label=arm, color=colours[arm])
            for c_i, c in enumerate(cols):  # per-seed dots
                ax.scatter([xs[c_i] + (j - (len(arms) - 1) / 2) * w] * len(summary[scope][c][arm]["per_seed"]),
                           [100 * v for v in summary[scope][c][arm]["per_seed"]], s=8, color="k", zorder=3)
        lo = min(100 * summary[scope][c][a]["mean"] for c in cols for a in arms)
        ax.set_ylim(max(0, lo - 10), 100)
        ax.set_xticks(xs, [f"W/A {c}" if c != "mixed" else "mixed" for c in cols])
        ax.set_ylabel("digits val top-1 (%)")
        ax.set_title("mean over subnets" if scope == "all_subnets" else "largest subnet (paper's Table 3)")
    axes[0].legend(fontsize="small", loc="lower left")
    ax = axes[2]
    pa = PAPER["table3"]
    xs = np.arange(len(BITS))
    bars = [("paper (ImageNet, largest)", "tab:orange",
             [pa["two-stage"][f"{b}/{b}"] - pa["single-stage"][f"{b}/{b}"] for b in BITS]),
            ("bitnas: two minus single (all subnets, ±SE)", "tab:green",
             [100 * summary["all_subnets"][f"{b}/{b}"]["two_minus_single"]["mean"] for b in BITS])]
    se = [100 * (summary["all_subnets"][f"{b}/{b}"]["two_minus_single"]["standard_error"] or 0) for b in BITS]
    if "single-stage-restart" in arms:
        bars.append(("bitnas: two minus restart control", "tab:olive",
                     [100 * summary["all_subnets"][f"{b}/{b}"]["two_minus_restart_control"]["mean"] for b in BITS]))
    bw = 0.8 / len(bars)
    for j, (label, colour, vals) in enumerate(bars):
        ax.bar(xs + (j - (len(bars) - 1) / 2) * bw, vals, bw, label=label, color=colour,
               yerr=se if j == 1 else None, capsize=3 if j == 1 else 0)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(xs, [f"W/A {b}/{b}" for b in BITS])
    ax.set_ylabel("two-stage minus single-stage (points)")
    ax.set_title("the claim's difference")
    ax.legend(fontsize="x-small", loc="best")
    fig.suptitle("QFA bit schedule: two-stage vs single-stage (qfa-mbv3-tiny, digits)")
    fig.tight_layout()
    from bitnas.plots import figure_png

    return figure_png(fig, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
