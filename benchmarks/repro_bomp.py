"""BOMP-NAS reproduction: quantization-aware fine-tuning (QAFT) inside the search loop against PTQ-scored search.

The paper's claim (BOMP-NAS, paper 000, Sections V-VI, Fig. 5): with mixed-precision weights of 4-8 bits,
putting one epoch of QAFT into the NAS loop (each candidate fine-tuned at its bits before it is scored)
gives a better accuracy / model-size Pareto front than the same Bayesian-optimization search scoring
candidates by post-training quantization (PTQ): models almost half the size on CIFAR-10. The paper
compares fronts by plots and size at equal accuracy; it reports no hypervolume.

What this script does, at small scale on the digits (16x16 by default):

- one ``bitfusion-mbv2-tiny`` supernet by default (mbv2-tiny's architecture with W and A bits in
  {2, 4, 8} per layer, no float layer; ``--space bomp-mbv2-tiny`` is BOMP's own W{4..8}A8, where
  W5-7 are stored as INT8 and so never smaller than W8), trained once by the project (``bitnas train``'s recipe) and cached in ``--work``;
- two variants of its policy (``--activations``): ``searched``, the space as it is (activation bits
  searched too), and ``8``, every layer's activations fixed at 8 bits as in BOMP (the same space with
  each policy gene's options narrowed to W{2,4,8}A8; the same supernet weights);
- per variant and seed, two searches with the same searcher (``bo`` with BOMP's acquisition: a GP with a
  Matérn kernel over the one-hot encoding, UCB on the scalarization of eq. 1), the same seed and the
  same budget of true evaluations, on the objectives BOMP uses (accuracy, model size = ``size_bytes``,
  what the artifact stores): ``ptq`` (``search.evaluation: simulated``, min/max PTQ in PyTorch) and
  ``qaft`` (``search.evaluation: qaft``, ``--qaft-epochs`` of QAFT, then the same simulated quantization);
- every member of each arm's searched front re-scored by one final measure shared by both arms:
  ``--final-epochs`` of QAFT (bitnas's compile pipeline fine-tunes 1 epoch by default; BOMP trains
  its front fully then fine-tunes 5) with a calibration and data-order seed (``--final-seed``) that
  neither search used, so the QAFT arm is not re-scored by the very numbers it selected on;
- hypervolume of each front under a fixed normalization and reference point shared by both arms
  (``Problem.hv_reference`` of the space: size from its extremes, accuracy from 1 to
  ``search.accuracy_reference``), as searched, under the PTQ measure and under the final measure; the
  verdict counts seeds where the QAFT arm's re-scored hypervolume is higher by more than ``--tie``; and
  the smallest model size each re-scored front reaches at a grid of accuracy levels.

Writes ``repro_bomp.json`` and ``repro_bomp.png`` (``--name``) to ``--out``. With ``--space bomp-mbv2-tiny
--target bitops --activations searched`` the space is BOMP's own W{4..8}A8. A rerun resumes (supernet, LUT, every
study and every re-score are stored in ``--work``).

    python benchmarks/repro_bomp.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from bitnas.io import atomic_write_bytes, atomic_write_json

ARMS = ("ptq", "qaft")
PAPER_CLAIM = ("QAFT in the search loop gives a better accuracy / model-size front than PTQ-scored search with "
               "mixed-precision weights (W4-8, A8): models almost half the size on CIFAR-10 (Fig. 5; no "
               "hypervolume reported)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/repro_bomp", help="run folder (supernet, LUT, studies; reused)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--space", default="bitfusion-mbv2-tiny", help="a space with sub-8-bit options")
    ap.add_argument("--target", default="bitfusion", help="the project's target (the cost objective needs no LUT; "
                                                          "bomp-mbv2-tiny's W5/W7 run on CPU targets or 'bitops')")
    ap.add_argument("--name", default="repro_bomp", help="file stem of the JSON and plot written to --out")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=12, help="supernet training epochs")
    ap.add_argument("--cost", default="size_bytes", help="the second objective (BOMP: model size)")
    ap.add_argument("--budget", type=int, default=20, help="true evaluations per search")
    ap.add_argument("--pop-size", type=int, default=6, help="bo: initial design")
    ap.add_argument("--batch-size", type=int, default=2, help="bo: candidates per round")
    ap.add_argument("--acquisition", default="ucb", choices=["ucb", "hvi"], help="bo: ucb is BOMP-NAS's")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3],
                    help="searcher seeds (one search per arm each)")
    ap.add_argument("--qaft-epochs", type=int, default=1, help="QAFT epochs per candidate in the loop (BOMP: 1)")
    ap.add_argument("--qaft-lr", type=float, default=1e-3)
    ap.add_argument("--final-epochs", type=int, default=5,
                    help="QAFT epochs of the final re-score of each front (BOMP: 5 after training the front)")
    ap.add_argument("--final-seed", type=int, default=100, help="calibration / data-order seed of the re-score")
    ap.add_argument("--activations", nargs="+", default=["searched", "8"], choices=["searched", "8"],
                    help="policy variants: activation bits searched (the space as is), or fixed at 8 (BOMP)")
    ap.add_argument("--accuracy-levels", type=float, nargs="+", default=[0.8, 0.85, 0.9, 0.95, 0.96, 0.97],
                    help="report the smallest model of each re-scored front at these accuracies")
    ap.add_argument("--tie", type=float, default=0.01,
                    help="a seed whose two re-scored hypervolumes differ by at most this counts as a tie")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    base = setup_project(args)
    full = {arm: arm_project(base, args, arm).problem() for arm in ARMS}
    ideal, ref = full["ptq"].hv_reference()  # the whole space's normalization, for every variant and arm
    variants = {}
    for variant in args.activations:
        problems = {arm: restrict(pr, variant) for arm, pr in full.items()}
        final = final_problem(problems["qaft"], base, args)
        runs = []
        for seed in args.seeds:
            run = {"seed": seed, "arms": {}}
            for arm in ARMS:
                run["arms"][arm] = search_arm(base, problems[arm], args, arm, seed, variant, t0)
            for arm in ARMS:
                rescore_front(run["arms"][arm], final, problems[arm], args, t0, arm, seed, variant)
            for arm in ARMS:
                score_arm(run["arms"][arm], problems[arm], ideal, ref, args)
            runs.append(run)
            a, b = run["arms"]["ptq"], run["arms"]["qaft"]
            print(f"[{time.time() - t0:6.0f}s] A {variant}, seed {seed}: hv as searched ptq {a['hv_as_searched']:.4f} "
                  f"qaft {b['hv_as_searched']:.4f}; PTQ measure ptq {a['hv_ptq_measure']:.4f} qaft "
                  f"{b['hv_ptq_measure']:.4f}; final measure ptq {a['hv_final']:.4f} qaft {b['hv_final']:.4f}",
                  flush=True)
        variants[variant] = summarize_variant(runs, args, problems, final)
    result = summarize(variants, args, full, ideal, ref, t0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{args.name}.json", result)
    atomic_write_bytes(out / f"{args.name}.png", plot(variants, args))
    print("\n".join(result["headline"].values()))
    print(f"wrote {out / (args.name + '.json')} and {out / (args.name + '.png')} ({result['wall_time_s']:.0f} s)")
    return 0


# ------------------------------------------------------------------------------------------ project and problems
def setup_project(args):
    """The run folder's project (created by ``bitnas init`` on first use); refuses a folder of other settings."""
    from bitnas.cli import main as cli
    from bitnas.project import Project

    work = Path(args.work)
    if not (work / "project.yaml").exists():
        assert cli(["init", str(work), "--space", args.space, "--target", args.target,
                    "--image-size", str(args.image_size)]) == 0
        cfg = yaml.safe_load((work / "project.yaml").read_text())
        cfg["seed"] = 0
        cfg["train"]["epochs"] = args.epochs
        (work / "project.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    project = Project.load(work)
    c = project.cfg
    if (c.family.space, c.data.image_size, c.train.epochs) != (args.space, args.image_size, args.epochs):
        raise SystemExit(f"{work}: a project of space {c.family.space}, {c.data.image_size}px, {c.train.epochs} "
                         f"epochs; these arguments ask for {args.space}, {args.image_size}px, {args.epochs} epochs: "
                         "pass another --work")
    return project


def arm_project(project, args, arm: str, seed: int | None = None):
    """The project with the arm's search section (and ``seed``, for the searcher only: the supernet, the
    calibration batches and the QAFT seed stay the project's)."""
    from bitnas.config import validate_config
    from bitnas.project import Project, ProjectConfig

    cfg = project.cfg.model_dump(mode="json")
    cfg["search"].update({"searcher": "bo", "budget": args.budget, "pop_size": args.pop_size,
                          "options": {"batch_size": args.batch_size, "acquisition": args.acquisition},
                          "objectives": ["accuracy", args.cost], "constraints": {},
                          "evaluation": "simulated" if arm == "ptq" else "qaft",
                          "qaft": None if arm == "ptq" else {"epochs": args.qaft_epochs, "lr": args.qaft_lr}})
    if seed is not None:
        cfg["seed"] = seed
    source = f"{project.source} ({arm} arm)"
    return Project(validate_config(ProjectConfig, cfg, source), project.run.root, source, base=project.base)


class PolicySupernet:
    """``net`` searched through ``space`` (its genes, some policy options left out): the same weights, layers
    and extraction, since every candidate of ``space`` is a candidate of ``net.space``."""

    def __init__(self, net, space):
        self._net, self.space = net, space

    def __getattr__(self, name):
        return getattr(self._net, name)


def restrict(problem, variant: str):
    """``problem`` as is (``searched``), or with every policy gene narrowed to its options with 8-bit
    activations (``8``, BOMP's setting), under its own problem identity."""
    if variant == "searched":
        return problem
    from bitnas.problem import problem_id
    from bitnas.space import SearchSpace

    space = problem.space
    genes = [replace(g, options=tuple(o for o in g.options if o[1] == 8)) if g.kind == "policy" else g
             for g in space.genes]
    narrow = SearchSpace(f"{space.name}-a8", genes, f"{space.name} with 8-bit activations in every layer")
    ident = {k: v for k, v in problem.problem.items() if k != "hash"}
    ident["space"] = narrow.name
    return replace(problem, supernet=PolicySupernet(problem.supernet, narrow), problem=problem_id(ident),
                   _scorer=None)


def final_problem(qaft_problem, project, args):
    """The shared final measure: ``--final-epochs`` of QAFT with calibration batches and a data order drawn
    from ``--final-seed``, then simulated-quantization accuracy (and the PTQ accuracy at that seed)."""
    from bitnas.problem import evaluation_id, problem_id
    from bitnas.supernets.evaluate import calibration_batches

    calib = calibration_batches(qaft_problem.data, project.cfg.search.calib_batches, 64, args.final_seed)
    ident = {k: v for k, v in qaft_problem.problem.items() if k != "hash"}
    ident.update({"evaluation": evaluation_id("qaft", args.final_epochs, args.qaft_lr), "seed": args.final_seed,
                  "role": "final re-score of searched fronts"})
    return replace(qaft_problem, calib=calib, qaft_epochs=args.final_epochs, seed=args.final_seed,
                   problem=problem_id(ident), _scorer=None)


# ------------------------------------------------------------------------------------------ search and re-score
def search_arm(project, problem, args, arm: str, seed: int, variant: str, t0: float) -> dict:
    from bitnas.searchers import Study, run_search

    searcher = arm_project(project, args, arm, seed).make_searcher(problem)
    tag = "" if variant == "searched" else f".a{variant}"
    name = f"study.{arm}{tag}.{args.cost}.{args.acquisition}.p{args.pop_size}b{args.batch_size}.seed{seed}.sqlite"
    study = Study(Path(args.work) / name, problem.problem)
    start = time.time()

    def progress(n: int, total: int, obj: dict) -> None:
        print(f"[{time.time() - t0:6.0f}s] A {variant}, seed {seed} {arm}: {n}/{total} accuracy {obj['accuracy']:.4f} "
              f"{args.cost} {obj[args.cost]:.6g}", flush=True)

    evals = run_search(searcher, problem.evaluate, args.budget, study, progress)[: args.budget]
    study.close()
    return {"study": str(Path(args.work) / name), "evaluations": len(evals),
            "search_wall_s": time.time() - start,  # 0 when every evaluation came from the study
            "true_eval_s": float(sum(e.wall_time_s for e in evals)),
            "evaluated": [{"id": e.candidate.id, **e.objectives} for e in evals],
            "_evals": evals}


def front_of(problem, evals) -> list:
    from bitnas.searchers import non_dominated

    F = np.array([problem.minimization(e.objectives) for e in evals])
    return [e for e, m in zip(evals, non_dominated(F)) if m]


def rescore_front(rec: dict, final, problem, args, t0: float, arm: str, seed: int, variant: str) -> None:
    """Each member of the arm's searched front, measured by ``final`` (stored in one study: resumable)."""
    from bitnas.searchers import Study

    front = front_of(problem, rec["_evals"])
    study = Study(Path(args.work) / f"final.{final.problem['hash']}.sqlite", final.problem)
    out = []
    for i, e in enumerate(front):
        c = e.candidate
        obj = study.get(c.id)
        if obj is None:
            start = time.time()
            obj = final.evaluate(c)
            study.add(c, final.space.encode(c), obj, time.time() - start)
        bits = [s.bits for s in final.supernet.layers(c)]  # the active layers' (w, a)
        out.append({"id": c.id, "as_searched": e.objectives, "final": obj,
                    "layers": len(bits), "layers_w_below_8": sum(w < 8 for w, _ in bits),
                    "layers_a_below_8": sum(a < 8 for _, a in bits), "candidate": c.to_dict()})
        print(f"[{time.time() - t0:6.0f}s] A {variant}, seed {seed} {arm}: re-scored front member {i + 1}/{len(front)}: "
              f"accuracy as searched {e.objectives['accuracy']:.4f}, final {obj['accuracy']:.4f}", flush=True)
    study.close()
    rec["front"] = out


def score_arm(rec: dict, problem, ideal, ref, args) -> None:
    from bitnas.problem import normalized_hv

    def hv(points) -> float:
        return normalized_hv(np.array([problem.minimization(p) for p in points]), ideal, ref)

    front = rec["front"]
    rec["hv_as_searched"] = hv([e.objectives for e in rec.pop("_evals")])
    # PTQ measure: the PTQ arm's own accuracy; the QAFT arm's PTQ accuracy of the same candidate (same seed)
    rec["hv_ptq_measure"] = hv([{**m["as_searched"], "accuracy": m["as_searched"].get(
        "accuracy_simulated", m["as_searched"]["accuracy"])} for m in front])
    rec["hv_final"] = hv([m["final"] for m in front])
    rec["smallest_at_accuracy"] = {
        str(level): min((m["final"][args.cost] for m in front if m["final"]["accuracy"] >= level), default=None)
        for level in args.accuracy_levels}


# ------------------------------------------------------------------------------------------ summary and plot
def summarize_variant(runs, args, problems, final) -> dict:
    """One policy variant: hypervolumes per measure, the smallest model at each accuracy level, the verdict."""
    hv = {measure: {arm: [r["arms"][arm][measure] for r in runs] for arm in ARMS}
          for measure in ("hv_as_searched", "hv_ptq_measure", "hv_final")}
    mean = {m: {arm: float(np.mean(v)) for arm, v in d.items()} for m, d in hv.items()}
    delta = [r["arms"]["qaft"]["hv_final"] - r["arms"]["ptq"]["hv_final"] for r in runs]
    wins, losses = sum(x > args.tie for x in delta), sum(x < -args.tie for x in delta)
    ties = len(runs) - wins - losses
    size = {}
    for level in args.accuracy_levels:
        per = {arm: [r["arms"][arm]["smallest_at_accuracy"][str(level)] for r in runs] for arm in ARMS}
        pairs = [(q, p) for q, p in zip(per["qaft"], per["ptq"]) if q is not None and p is not None]
        size[str(level)] = {**per, "seeds_where_both_reach_it": len(pairs),
                            "qaft_over_ptq_mean": float(np.mean([q / p for q, p in pairs])) if pairs else None}
    reduction = {k: (None if v["qaft_over_ptq_mean"] is None else 1 - v["qaft_over_ptq_mean"]) for k, v in size.items()}
    tally = f"QAFT arm better by more than {args.tie} in {wins}, tied in {ties}, worse in {losses} of {len(runs)} seeds"
    verdict = (f"reproduced here ({tally})" if wins == len(runs) else
               f"not reproduced here ({tally})" if wins == 0 else f"mixed here ({tally})")
    red = ", ".join(f">={float(k):.0%}: " + ("n/a" if v is None else
                                               f"{v:+.0%} ({size[k]['seeds_where_both_reach_it']} seed(s))")
                    for k, v in reduction.items())
    space = problems["ptq"].space
    acts = "activation bits searched" if space.name == args.space else "activations fixed at 8 bits"
    headline = (f"BOMP-NAS ({space.name}, {acts}; QAFT in the loop vs PTQ-scored search, bo/{args.acquisition}, "
                f"{args.budget} evaluations each, {len(runs)} seeds): hypervolume of the searched fronts re-scored by "
                f"{args.final_epochs}-epoch QAFT: qaft {mean['hv_final']['qaft']:.4f} vs ptq "
                f"{mean['hv_final']['ptq']:.4f}; size reduction of the "
                f"smallest model at accuracy {red}; {verdict}. Paper: models almost half the size on CIFAR-10")
    return {
        "bitnas_figure": {"hv_final_mean": mean["hv_final"], "hv_final_qaft_minus_ptq_per_seed": delta,
                          "qaft_wins_ties_losses": [wins, ties, losses],
                          "size_reduction_at_accuracy": reduction, "verdict": verdict},
        "headline": headline,
        "space": {"name": space.name, "joint_cardinality": space.cardinality()["joint_cardinality"],
                  "bit_options": [f"W{w}A{a}" for w, a in
                                  sorted({tuple(o) for g in space.policy_genes for o in g.options})]},
        "final_measure_problem_hash": final.problem["hash"],
        "hypervolume": {"per_seed": hv, "mean": mean},
        "smallest_at_accuracy": size,
        "runs": runs,
    }


def summarize(variants, args, full, ideal, ref, t0) -> dict:
    return {
        "command": " ".join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "paper": "BOMP-NAS (papers/000)", "paper_claim": PAPER_CLAIM,
        "bitnas_figure": {f"activations {v}": r["bitnas_figure"] for v, r in variants.items()},
        "headline": {f"activations {v}": r["headline"] for v, r in variants.items()},
        "setup": {
            "space": args.space,
            "data": f"digits {args.image_size}x{args.image_size} (train split for training and QAFT, val split for "
                    "accuracy)",
            "target": f"{args.target} (the cost objective needs no LUT)",
            "objectives": ["accuracy", args.cost],
            "cost_note": "size_bytes is what the artifact stores: 2-4-bit weights packed as INT4, 5-7-bit ones as INT8, "
                         "so W2 is no smaller than W4 and W5-7 no smaller than W8; activation bits do not change "
                         "the size",
            "variants": {"searched": "the space as is (" + ("W{4..8}A8 per layer: BOMP's own" if args.space ==
                                                             "bomp-mbv2-tiny" else "W and A bits in {2, 4, 8} per layer")
                                     + ")",
                         "8": "the same space and weights with 8-bit activations in every layer (BOMP: A8)"},
            "searcher": {"name": "bo", "acquisition": args.acquisition, "pop_size": args.pop_size,
                         "batch_size": args.batch_size, "init": "cheap-front (the searcher's default)"},
            "budget_per_arm": args.budget, "seeds": args.seeds, "supernet_epochs": args.epochs,
            "accuracy_levels": args.accuracy_levels, "tie_tolerance_hv": args.tie,
            "supernet_training": "mbv2 family recipe: float sandwich rule with in-place distillation; bits are "
                                 "applied after training",
            "arms": {"ptq": "search.evaluation simulated: min/max PTQ of the candidate's policy (BN recalibrated)",
                     "qaft": f"search.evaluation qaft: {args.qaft_epochs} epoch(s) of QAFT (lr {args.qaft_lr}), "
                             "then the same simulated quantization"},
            "final_measure": f"{args.final_epochs} epoch(s) of QAFT with calibration and data-order seed "
                             f"{args.final_seed} (the searches used {full['ptq'].seed}), then simulated "
                             "quantization",
            "hv_normalization": {"ideal": ideal.tolist(), "reference_point": ref.tolist(),
                                 "accuracy_reference": full["ptq"].accuracy_reference,
                                 "rows": "minimization rows [-accuracy, " + args.cost + "]",
                                 "note": "the whole space's extremes, for every variant and arm"},
            "hv_measures": {"hv_as_searched": "every evaluation, each arm by its own measure",
                            "hv_ptq_measure": "searched front members by their PTQ accuracy (search seed)",
                            "hv_final": "searched front members re-scored by the final measure"},
        },
        "variants": {f"activations {v}": r for v, r in variants.items()},
        "wall_time_s": time.time() - t0,
    }


def plot(variants, args) -> bytes:
    """Per variant (one row): hypervolume per measure, the re-scored fronts of every seed, the fronts as
    searched, and the smallest model at each accuracy level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ptq": "tab:blue", "qaft": "tab:red"}
    markers = "osD^v<>p"
    scale = 1 / 1024 if args.cost == "size_bytes" else 1.0
    unit = "size (KiB)" if args.cost == "size_bytes" else args.cost
    fig, axes = plt.subplots(len(variants), 4, figsize=(22, 4.6 * len(variants)), squeeze=False)
    width = 0.38
    for row, (variant, res) in zip(axes, variants.items()):
        runs, name = res["runs"], f"A {'searched' if variant == 'searched' else '8'}"
        ax = row[0]
        measures = [("hv_as_searched", "as searched\n(own measure)"), ("hv_ptq_measure", "front by\nPTQ accuracy"),
                    ("hv_final", f"front re-scored\n({args.final_epochs}-epoch QAFT)")]
        for j, arm in enumerate(ARMS):
            for i, (key, _) in enumerate(measures):
                vals = [r["arms"][arm][key] for r in runs]
                x = i + (j - 0.5) * width
                ax.bar(x, np.mean(vals), width, color=colours[arm], alpha=0.6, label=arm if i == 0 else None)
                ax.scatter([x] * len(vals), vals, color="k", s=8, zorder=3)
        ax.set_xticks(range(len(measures)))
        ax.set_xticklabels([m[1] for m in measures], fontsize=8)
        ax.set_ylabel("hypervolume (fixed reference)")
        ax.set_title(f"{name}: hypervolume, mean of {len(runs)} seeds (dots: seeds)", fontsize=10)
        ax.legend(fontsize=8)
        for ax, key, title in ((row[1], "final", f"fronts re-scored by {args.final_epochs}-epoch QAFT"),
                               (row[2], "as_searched", "fronts as searched (each arm's own measure)")):
            for arm, c in colours.items():
                for k, r in enumerate(runs):
                    fr = np.array(sorted([m[key][args.cost] * scale, m[key]["accuracy"] * 100]
                                         for m in r["arms"][arm]["front"]))
                    ax.step(fr[:, 0], np.maximum.accumulate(fr[:, 1]), where="post", color=c, alpha=0.6, lw=1)
                    ax.scatter(fr[:, 0], fr[:, 1], color=c, marker=markers[k % len(markers)], s=22,
                               label=f"{arm}, seed {r['seed']}")
            ax.set_xlabel(unit)
            ax.set_ylabel("top-1 on val (%)")
            ax.set_title(f"{name}: {title}", fontsize=10)
            ax.legend(fontsize=6, ncol=2, loc="lower right")
        ax = row[3]
        size = res["smallest_at_accuracy"]
        levels = list(size)
        for j, arm in enumerate(ARMS):
            for i, level in enumerate(levels):
                vals = [v * scale for v in size[level][arm] if v is not None]
                x = i + (j - 0.5) * width
                if vals:
                    ax.bar(x, np.mean(vals), width, color=colours[arm], alpha=0.6, label=arm if i == 0 else None)
                    ax.scatter([x] * len(vals), vals, color="k", s=8, zorder=3)
        reached = {v: [sum(x is not None for x in size[v][arm]) for arm in ARMS] for v in levels}
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels([f">={float(v):.0%}\n{reached[v][0]} / {reached[v][1]}" for v in levels], fontsize=8)
        ax.set_xlabel("accuracy level; seeds whose front reaches it (ptq / qaft)", fontsize=8)
        ax.set_ylabel(f"smallest re-scored front member, {unit}")
        ax.set_title(f"{name}: smallest model at an accuracy", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"BOMP-NAS reproduction on digits {args.image_size}x{args.image_size}: QAFT in the loop vs "
                 f"PTQ-scored search ({args.space}, {args.budget} evaluations each, bo/{args.acquisition})",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    from bitnas.plots import figure_png

    return figure_png(fig, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
