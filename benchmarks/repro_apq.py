"""APQ reproduction: predictor transfer (float pre-training, few quantized samples) vs training from scratch,
inside the search.

Paper (APQ, Wang et al. 2020): a quantization-aware accuracy predictor pre-trained on many cheap
(architecture, float accuracy) pairs and fine-tuned on few (architecture + policy, quantized accuracy) pairs
beats one trained from scratch on the same quantized pairs. Figures: pairwise accuracy 75.6% vs 64.6% with
very few quantized samples (Fig. 7; ~3k vs >=4k samples to reach 85%), and the searched model's ImageNet
top-1 74.1% (with transfer) vs 72.1% (without) at similar BitFusion latency/energy (Table 3).

Here: the ``apq-mbv2-tiny`` supernet (APQ's per-layer W/A bits {4, 6, 8}) trained on the embedded digits
(16x16 by default), objectives accuracy (simulated post-training quantization on the val split, the
search's own true evaluation) and BitFusion energy from the simulated ``bitfusion`` LUT. For every seed
bitnas's ``evolution`` searcher (APQ's constrained evolution on an MLP predictor) runs twice with the same
seed and the same budget of true evaluations: ``transfer`` (``transfer=True``: the MLP is pre-trained once
on ``--float-samples`` float-subnet accuracies, then each round fine-tuned on the quantized samples so far)
and ``scratch`` (``transfer=False``: each round a fresh MLP on the same kind of samples). Reported:

(a) normalized hypervolume of the evaluated points after every true evaluation, with the problem's fixed
    normalization and reference point (``Problem.hv_reference``: accuracy from 1 to 0.5, energy from 0.9x
    the smallest narrowest subnet to 1.05x the largest widest one), shared by every run;
(b) the end-of-search predictor (what the searcher would fit on its full history) scored by Kendall tau
    (and APQ's pairwise accuracy) against true accuracy on held-out evaluated candidates: ``--held-out``
    random candidates (evaluated once, shared; those in the run's history are left out), and the other
    arm's evaluated candidates that this run did not evaluate (search-relevant points near the front);
(c) a predictor learning curve: transfer and scratch MLPs fitted on the first k evaluations of each run's
    history (the same few samples for both) scored on the random held-out set, APQ's Fig. 7 in small.

The transfer arm also spends ``--float-samples`` float evaluations outside the budget (as in APQ); their time
is reported. True evaluations are deterministic per candidate, so all runs share one evaluation cache.
Resumable: the supernet/LUT live in ``--work``, each finished run is kept as JSON there and skipped.

    python benchmarks/repro_apq.py            # ~26 minutes on 2 cores shared with other jobs (load average ~7)

Writes ``--out`` (benchmarks/results/repro_apq.json) and the PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("transfer", "scratch")
PAPER = {
    "claim": "a quantization-aware accuracy predictor transferred from a full-precision one (pre-trained on many "
             "float samples, fine-tuned on few quantized samples) beats one trained from scratch on the same few "
             "quantized samples, and the search using it finds better models",
    "figure": "Fig. 7: pairwise accuracy 75.6% (transfer) vs 64.6% (scratch) with very limited quantized data; "
              "Table 3: searched model ImageNet top-1 74.1% (w/ transfer, Ours-B) vs 72.1% (w/o, Ours-A)",
    "source": "APQ (Wang et al., CVPR 2020), /work/shared/papers/004_80abac0eb6b5d75b.txt",
}


def log(t0: float, msg: str) -> None:
    print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)


def setup_project(args):
    """The run folder's project (created on first use): apq space, BitFusion target, accuracy + energy."""
    import yaml

    from bitnas.cli import main as cli
    from bitnas.project import Project

    work = Path(args.work)
    if not (work / "project.yaml").exists():
        assert cli(["init", str(work), "--space", args.space, "--target", "bitfusion",
                    "--image-size", str(args.image_size)]) == 0
        cfg = yaml.safe_load((work / "project.yaml").read_text())
        cfg["seed"] = 0
        cfg["train"]["epochs"] = args.epochs
        cfg["search"]["objectives"] = ["accuracy", "energy_mj"]
        cfg["search"]["calib_batches"] = args.calib_batches
        cfg["search"]["accuracy_reference"] = 0.5
        (work / "project.yaml").write_text(yaml.safe_dump(cfg))
    return Project.load(work)


def cached_evaluate(problem, cache):
    def evaluate(c):
        hit = cache.get(c.id)
        if hit is not None:
            return hit
        t = time.perf_counter()
        obj = problem.evaluate(c)
        cache.add(c, problem.space.encode(c), obj, time.perf_counter() - t)
        return obj
    return evaluate


def make_searcher(problem, arm: str, seed: int, args):
    from bitnas.searchers.evolution import EvolutionSearcher

    s = EvolutionSearcher(problem.space, problem.objectives, seed=seed, cheap=problem.cheap_evaluator,
                          pop_size=args.pop_size, batch_size=args.batch_size, transfer=(arm == "transfer"),
                          float_samples=args.float_samples, supernet=problem.supernet, data=problem.data,
                          lut=problem.lut, reduce_range=problem.reduce_range)
    if arm == "transfer" and not s.transfer:
        raise SystemExit("the evolution searcher refused transfer (needs the MLP, accuracy and the supernet)")
    return s


def run_one(problem, evaluate, arm: str, seed: int, args, work: Path, settings: dict, t0: float) -> dict:
    """One search (resumed from its JSON when it finished before with the same settings)."""
    from bitnas.problem import normalized_hv
    from bitnas.searchers import Study, run_search

    done = work / "runs" / f"{arm}-{seed}.json"
    if done.exists():
        rec = json.loads(done.read_text())
        if rec.get("settings") == settings:
            log(t0, f"{arm} seed {seed}: finished before, kept ({done})")
            return rec
    path = work / "runs" / f"{arm}-{seed}.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)
    study = Study(path, problem.problem)
    searcher = make_searcher(problem, arm, seed, args)
    ts = time.perf_counter()

    def progress(n, total, obj):
        if n % 10 == 0:
            log(t0, f"{arm} seed {seed}: {n}/{total} evaluations")

    evals = run_search(searcher, evaluate, args.budget, study, progress)
    wall = time.perf_counter() - ts
    study.close()
    ideal, ref = problem.hv_reference()
    F = np.array([problem.minimization(e.objectives) for e in evals])
    hv = [normalized_hv(F[: i + 1], ideal, ref) for i in range(len(F))]
    rec = {"arm": arm, "seed": seed, "settings": settings, "evaluations": len(evals), "hv": hv,
           "wall_s": wall, "float_pretrain_s": searcher.float_seconds, "transfer_rounds": searcher.transfers,
           "rounds": searcher.rounds,
           "history": [{"candidate": e.candidate.to_dict(), "accuracy": e.objectives["accuracy"],
                        "energy_mj": e.objectives["energy_mj"]} for e in evals]}
    from bitnas.io import atomic_write_json

    atomic_write_json(done, rec)
    log(t0, f"{arm} seed {seed}: {len(evals)} evaluations, hv {hv[-1]:.4f}, {wall:.0f} s "
            f"(float pre-training {searcher.float_seconds:.0f} s)")
    return rec


def fitted(problem, arm: str, seed: int, args, cands, acc, pretrained):
    """The predictor the ``arm`` searcher fits on (cands, acc), exactly as it does inside the search."""
    s = make_searcher(problem, arm, seed, args)
    if arm == "transfer":
        s.pretrained = pretrained[seed] if seed in pretrained else s.pretrain()
        pretrained[seed] = s.pretrained
    rows = np.zeros((len(cands), len(problem.objectives)))
    rows[:, s.primary] = -np.asarray(acc, float)  # the searcher minimizes negated accuracy
    s.tell(cands, rows)
    return s.fit_predictor()


def scores(pred, problem, cands, acc) -> dict:
    from bitnas.searchers.predictors import kendall_tau, onehot, pairwise_accuracy

    if len(cands) < 3:
        return {"n": len(cands), "kendall_tau": None, "pairwise_accuracy": None}
    p = -pred.predict(onehot(problem.space, cands))  # back to accuracy
    acc = np.asarray(acc, float)
    return {"n": len(cands), "kendall_tau": kendall_tau(acc, p), "pairwise_accuracy": pairwise_accuracy(acc, p)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="apq-mbv2-tiny")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=12, help="supernet training epochs (float, sandwich rule)")
    ap.add_argument("--calib-batches", type=int, default=2)
    ap.add_argument("--budget", type=int, default=60, help="true evaluations per search")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--pop-size", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=5)
    ap.add_argument("--float-samples", type=int, default=100, help="float-accuracy samples of the transfer arm")
    ap.add_argument("--held-out", type=int, default=100, help="random held-out candidates (true evaluations)")
    ap.add_argument("--curve", type=int, nargs="+", default=[5, 10, 20, 30, 45, 60],
                    help="history prefixes (k) for the predictor learning curve")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="runs/repro_apq", help="run folder (supernet, LUT, caches, finished runs)")
    ap.add_argument("--out", default=str(RESULTS / "repro_apq.json"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from bitnas.io import atomic_write_bytes, atomic_write_json
    from bitnas.searchers import Study
    from bitnas.space import Candidate

    t0 = time.time()
    work = Path(args.work)
    out = Path(args.out)
    project = setup_project(args)
    built = not (work / "supernet.pt").exists() or not (work / "lut.json").exists()
    problem = project.problem()  # trains (or loads) the supernet, simulates the BitFusion LUT
    log(t0, f"problem ready: {problem.space.name}, objectives {[o.name for o in problem.objectives]}")
    setup_s = time.time() - t0
    timing_path = work / "timings.json"
    timings = json.loads(timing_path.read_text()) if timing_path.exists() else {"invocations": []}
    if built:  # the supernet training + LUT simulation time, kept for the invocations that resume
        timings["setup_seconds"] = round(setup_s, 1)
    cache = Study(work / f"cache-{problem.problem['hash']}.sqlite", problem.problem)
    evaluate = cached_evaluate(problem, cache)
    space = problem.space
    settings = {"problem": problem.problem["hash"], "budget": args.budget, "pop_size": args.pop_size,
                "batch_size": args.batch_size, "float_samples": args.float_samples}

    rng = np.random.default_rng(20240)
    held: dict[str, Candidate] = {}
    while len(held) < args.held_out:
        c = space.sample(rng)
        held.setdefault(c.id, c)
    held_c = list(held.values())
    th = time.perf_counter()
    held_acc = np.array([evaluate(c)["accuracy"] for c in held_c])
    log(t0, f"held-out: {len(held_c)} random candidates, accuracy {held_acc.min():.3f}..{held_acc.max():.3f} "
            f"({time.perf_counter() - th:.0f} s)")

    runs = {}
    for seed in args.seeds:
        for arm in ARMS:
            runs[(arm, seed)] = run_one(problem, evaluate, arm, seed, args, work, settings, t0)

    # ---- predictor quality at the end of each search, and the learning curve on shared few samples
    pretrained: dict[int, object] = {}
    pred_rows = []
    for (arm, seed), rec in runs.items():
        hist = [Candidate.from_dict(h["candidate"]) for h in rec["history"]]
        acc = [h["accuracy"] for h in rec["history"]]
        ids = {c.id for c in hist}
        other = runs[(ARMS[1 - ARMS.index(arm)], seed)]
        o_c, o_a = [], []
        for h in other["history"]:
            c = Candidate.from_dict(h["candidate"])
            if c.id not in ids:
                o_c.append(c)
                o_a.append(h["accuracy"])
        keep = [i for i, c in enumerate(held_c) if c.id not in ids]
        pred = fitted(problem, arm, seed, args, hist, acc, pretrained)
        row = {"arm": arm, "seed": seed,
               "end_random_held_out": scores(pred, problem, [held_c[i] for i in keep], held_acc[keep]),
               "end_other_arm_points": scores(pred, problem, o_c, o_a), "curve": {}}
        if arm == "transfer":  # the float-accuracy predictor alone, before any quantized sample
            row["float_only_random_held_out"] = scores(pretrained[seed], problem, [held_c[i] for i in keep],
                                                       held_acc[keep])
        for k in args.curve:
            if k > len(hist):
                continue
            row["curve"][str(k)] = {
                kind: scores(fitted(problem, kind, seed, args, hist[:k], acc[:k], pretrained), problem,
                             [held_c[i] for i in keep], held_acc[keep])
                for kind in ARMS}
        pred_rows.append(row)
        log(t0, f"predictor {arm} seed {seed}: held-out tau {row['end_random_held_out']['kendall_tau']:.3f}, "
                f"other-arm tau {row['end_other_arm_points']['kendall_tau']}")
    cache.close()

    summary = summarize(runs, pred_rows, args)
    command = " ".join(["python", Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
    timings["invocations"].append({"command": command, "wall_seconds": round(time.time() - t0, 1),
                                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    atomic_write_json(timing_path, timings)
    ideal, ref = problem.hv_reference()
    result = {
        "benchmark": "repro_apq",
        "command": command, "paper": PAPER,
        "bitnas": summary["headline"],
        "setup": {"space": space.name, "data": f"sklearn digits {args.image_size}x{args.image_size}",
                  "target": "bitfusion (simulated LUT, energy_mj)", "supernet_epochs": args.epochs,
                  "true_evaluation": "simulated post-training quantization of the subnet, BN recalibrated, val split",
                  "objectives": ["accuracy (max)", "energy_mj (min)"],
                  "searcher": "evolution (APQ constrained evolution, MLP predictor)",
                  "seeds": args.seeds, "budget_true_evaluations": args.budget, "pop_size": args.pop_size,
                  "batch_size": args.batch_size, "float_samples_transfer_arm": args.float_samples,
                  "held_out_random": len(held_c), "threads": args.threads},
        "hv_normalization": {"ideal": ideal.tolist(), "reference_point": ref.tolist(),
                             "note": "fixed from the space's extremes (Problem.hv_reference), shared by all runs"},
        "summary": summary, "predictors": pred_rows,
        "runs": [{k: v for k, v in r.items() if k != "settings"} for r in runs.values()],
        "held_out_accuracy": {"min": float(held_acc.min()), "mean": float(held_acc.mean()),
                              "max": float(held_acc.max())},
        "wall_seconds": round(time.time() - t0, 1),
        "timings": {"setup_seconds_supernet_training_and_lut": timings.get("setup_seconds"),
                    "search_seconds_per_run": {f"{r['arm']}-{r['seed']}": round(r["wall_s"], 1)
                                               for r in runs.values()},
                    "float_pretrain_seconds_per_run": {f"{r['arm']}-{r['seed']}": round(r["float_pretrain_s"], 1)
                                                       for r in runs.values() if r["arm"] == "transfer"},
                    "invocations": timings["invocations"],
                    "note": "2 cores shared with other jobs (load average ~7 during the runs): wall times are "
                            "inflated; a rerun resumes finished searches and redoes only the predictor analysis"},
    }
    atomic_write_json(out, result)
    atomic_write_bytes(out.with_suffix(".png"), plot(runs, pred_rows, args))
    log(t0, f"wrote {out} and {out.with_suffix('.png')}")
    for line in summary["headline"]["lines"]:
        print(line)
    return 0


def _ms(vals) -> dict:
    v = [x for x in vals if x is not None]
    return {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v)) if v else None, "n": len(v)}


def summarize(runs, pred_rows, args) -> dict:
    seeds = sorted({s for _, s in runs})
    hv = {arm: [runs[(arm, s)]["hv"][-1] for s in seeds] for arm in ARMS}
    hv_third = {arm: [runs[(arm, s)]["hv"][min(len(runs[(arm, s)]["hv"]), args.budget // 2) - 1] for s in seeds]
                for arm in ARMS}
    diff = [a - b for a, b in zip(hv["transfer"], hv["scratch"])]
    pr = {arm: [r for r in pred_rows if r["arm"] == arm] for arm in ARMS}
    tau = {arm: _ms([r["end_random_held_out"]["kendall_tau"] for r in pr[arm]]) for arm in ARMS}
    pw = {arm: _ms([r["end_random_held_out"]["pairwise_accuracy"] for r in pr[arm]]) for arm in ARMS}
    tau_o = {arm: _ms([r["end_other_arm_points"]["kendall_tau"] for r in pr[arm]]) for arm in ARMS}
    curve = {}
    for k in args.curve:
        cell = {}
        for kind in ARMS:
            vals = [r["curve"][str(k)][kind] for r in pred_rows if str(k) in r["curve"]]
            cell[kind] = {"kendall_tau": _ms([v["kendall_tau"] for v in vals]),
                          "pairwise_accuracy": _ms([v["pairwise_accuracy"] for v in vals])}
        curve[str(k)] = cell
    wins = sum(d > 0 for d in diff)
    hv_se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
    float_only = _ms([r["float_only_random_held_out"]["kendall_tau"] for r in pr["transfer"]
                      if "float_only_random_held_out" in r])
    lines = [
        f"hypervolume at {args.budget} true evaluations (mean over seeds {seeds}): transfer "
        f"{np.mean(hv['transfer']):.4f} vs scratch {np.mean(hv['scratch']):.4f} (diff {np.mean(diff):+.4f} ± "
        f"{hv_se:.4f} SE, transfer higher in {wins}/{len(diff)} seeds)",
        f"end-of-search predictor Kendall tau on random held-out: transfer {tau['transfer']['mean']:.3f} vs "
        f"scratch {tau['scratch']['mean']:.3f}; pairwise accuracy {pw['transfer']['mean']:.3f} vs "
        f"{pw['scratch']['mean']:.3f} (paper Fig. 7: 0.756 vs 0.646 with few samples)",
        f"on the other arm's evaluated points: tau transfer {tau_o['transfer']['mean']:.3f} vs scratch "
        f"{tau_o['scratch']['mean']:.3f}",
    ]
    ks = [k for k in curve if curve[k]["transfer"]["kendall_tau"]["n"]]
    lines.append("predictor fitted on the same first k samples of each run (held-out tau, mean over all runs): " +
                 ", ".join(f"k={k} transfer {curve[k]['transfer']['kendall_tau']['mean']:.3f} vs scratch "
                           f"{curve[k]['scratch']['kendall_tau']['mean']:.3f}" for k in ks))
    lines.append(f"float-accuracy predictor alone (no quantized sample): held-out tau {float_only['mean']:.3f}")
    checks = {
        "search_hv_transfer_higher_beyond_2se": bool(np.mean(diff) > 2 * hv_se),
        "end_of_search_tau_transfer_higher": bool(tau["transfer"]["mean"] > tau["scratch"]["mean"]),
        "same_samples_tau_transfer_higher_at_every_k": bool(ks) and all(
            curve[k]["transfer"]["kendall_tau"]["mean"] > curve[k]["scratch"]["kendall_tau"]["mean"] for k in ks),
    }
    reproduced = checks["search_hv_transfer_higher_beyond_2se"] and checks["end_of_search_tau_transfer_higher"]
    return {"hv_final": {arm: _ms(hv[arm]) for arm in ARMS}, "hv_at_half_budget": {arm: _ms(hv_third[arm]) for arm in ARMS},
            "hv_final_diff_transfer_minus_scratch": _ms(diff), "hv_transfer_wins": f"{wins}/{len(diff)}",
            "end_tau_random_held_out": tau, "end_pairwise_random_held_out": pw, "end_tau_other_arm_points": tau_o,
            "predictor_curve_same_samples": curve, "float_only_tau_random_held_out": float_only,
            "hv_final_diff_standard_error": hv_se,
            "headline": {"lines": lines, "checks": checks, "in_search_claim_reproduced": reproduced,
                         "verdict": ("in-search benefit reproduced here (small scale)" if reproduced else
                                     "in-search benefit not reproduced here at this scale" +
                                     ("; the transferred predictor does rank better when both see the same "
                                      "few samples" if checks["same_samples_tau_transfer_higher_at_every_k"]
                                      else ""))}}


def plot(runs, pred_rows, args) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"transfer": "tab:red", "scratch": "tab:blue"}
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    for arm in ARMS:
        curves = [r["hv"] for (a, _), r in runs.items() if a == arm]
        n = max(len(c) for c in curves)
        C = np.array([c + [c[-1]] * (n - len(c)) for c in curves])
        x = np.arange(1, n + 1)
        a1.plot(x, C.mean(0), color=colours[arm], label=f"{arm} (n={len(C)} seeds)")
        a1.fill_between(x, C.min(0), C.max(0), color=colours[arm], alpha=0.15)
        pts = np.array([[h["energy_mj"] * 1e3, h["accuracy"] * 100] for (a, _), r in runs.items() if a == arm
                        for h in r["history"]])
        a2.scatter(pts[:, 0], pts[:, 1], s=9, alpha=0.5, color=colours[arm], label=arm)
        ks = sorted(int(k) for r in pred_rows for k in r["curve"])
        ks = sorted(set(ks))
        m = [np.mean([r["curve"][str(k)][arm]["kendall_tau"] for r in pred_rows if str(k) in r["curve"]])
             for k in ks]
        a3.plot(ks, m, "o-", color=colours[arm], label=f"{arm} MLP")
    a1.set_xlabel("true evaluations")
    a1.set_ylabel("normalized hypervolume (fixed reference)")
    a1.set_title("evolution search: mean, min-max over seeds")
    a1.legend()
    a2.set_xlabel("BitFusion energy (uJ, simulated)")
    a2.set_ylabel("top-1 (%), simulated PTQ")
    a2.set_title("every evaluated candidate (all seeds)")
    a2.legend()
    a3.set_xlabel("quantized samples k (first k of each run's history)")
    a3.set_ylabel("Kendall tau on random held-out")
    a3.set_title("predictor on the same k samples (mean)")
    a3.axhline(0, color="grey", lw=0.8)
    a3.legend()
    fig.suptitle("APQ predictor transfer vs scratch (apq-mbv2-tiny, digits, BitFusion energy)")
    fig.tight_layout()
    from bitnas.plots import figure_png

    return figure_png(fig, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
