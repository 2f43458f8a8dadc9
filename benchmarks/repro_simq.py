"""SimQ-NAS reproduction: joint architecture + quantization-policy search against policy-only search.

The paper's claim (SimQ-NAS, paper 001, Section 4, Fig. 3): searching the sub-network architecture and the
per-layer INT8/FP32 policy jointly (LINAS, static PTQ with Intel Neural Compressor) finds a clearly better
front than searching the quantization policy alone on the fixed full network: much smaller models at
similar accuracy (BERT on SST2, accuracy against model size; shown as a plot, no number). Against the
full network quantized to INT8, its joint searches find models of the same accuracy 1.12x (BEiT-3), 1.97x
(ViT), 2.20x (BERT) and 2.30x (OFA ResNet50) faster, and 1.83x (BERT) to 2x (ResNet50) smaller. Here the
cost objective is LUT latency (the paper's Fig. 3 uses model size).

What this script does, on the demo problem (digits at 32x32, the shipped ONNX Runtime LUT of mbv2-tiny):

- one ``mbv2-tiny`` supernet (INT8 or FP32 per layer) trained once by the project and cached in ``--work``;
- LUT latency from the LUT shipped in ``bitnas.latency_luts`` (``ort-cpu_mbv2-tiny.json``, used as is:
  nothing is timed here; it was measured on another machine, so ``lut.force`` is set and the JSON names
  that machine);
- two LINAS searches with the same seed and the same budget of true evaluations, objectives accuracy
  and ``latency_ms``, accuracy by ``search.evaluation: inc-ptq`` (SimQ's INC static PTQ of the ONNX
  export, run on ONNX Runtime): ``joint`` over the whole space, and ``policy-only-<arch>`` over the same
  space with every architecture gene fixed to one option and only the per-layer policy free, for each
  ``--fixed`` architecture: ``largest`` (the full network, as SimQ's policy-only search keeps the full
  BERT) and ``middle`` (each gene's middle option: a network nearer the efficient end);
- hypervolume of each front with one fixed normalization and reference point (the whole space's,
  ``Problem.hv_reference``) after every evaluation, and the fastest front member at each fixed
  architecture's all-INT8 accuracy (SimQ's "INT8 baseline"), less 0, 0.5 and 1 points.

Writes ``repro_simq.json`` and ``repro_simq.png`` to ``--out``; a rerun resumes from ``--work``.

    python benchmarks/repro_simq.py --out benchmarks/results
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

PAPER_CLAIM = ("joint architecture + INT8/FP32 policy search (LINAS, INC static PTQ) finds a better front than "
               "policy-only search on the fixed full network (Fig. 3, BERT SST2, accuracy vs model size: much "
               "smaller at similar accuracy; a plot, no number); at the INT8 baseline's accuracy, joint search finds "
               "models 1.12x (BEiT-3), 1.97x (ViT), 2.20x (BERT), 2.30x (OFA ResNet50) faster")
DROPS = (0.0, 0.005, 0.01)


class FixedArchSupernet:
    """``net`` searched through ``space`` (its genes, the architecture fixed): the same weights, layers and
    extraction, since every candidate of ``space`` is a candidate of ``net.space``."""

    def __init__(self, net, space):
        self._net, self.space = net, space

    def __getattr__(self, name):
        return getattr(self._net, name)


def fixed_arch_space(space, how: str):
    """``space`` with each architecture gene reduced to one option (``largest`` or ``middle``); the policy
    genes (and which of them a depth switches on) unchanged."""
    from bitnas.space import SearchSpace

    if how == "largest":
        arch = space.largest().arch_dict
    else:
        arch = space.make({g.name: sorted(g.options)[(len(g.options) - 1) // 2] for g in space.arch_genes}).arch_dict
    genes = [replace(g, options=(arch[g.name],)) if g.kind == "arch" else g for g in space.genes]
    return SearchSpace(f"{space.name}-fixed-{how}", genes,
                       f"{space.name} with the architecture fixed to its {how} option per gene; per-layer policy free")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/repro_simq", help="run folder (supernet, studies; reused)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--epochs", type=int, default=12, help="supernet training epochs")
    ap.add_argument("--evaluation", default="inc-ptq", choices=["inc-ptq", "simulated"],
                    help="accuracy of a true evaluation (SimQ: INC static PTQ)")
    ap.add_argument("--budget", type=int, default=24, help="true evaluations per search")
    ap.add_argument("--pop-size", type=int, default=8, help="linas: first population")
    ap.add_argument("--batch-size", type=int, default=4, help="linas: candidates per round")
    ap.add_argument("--fixed", nargs="+", default=["largest", "middle"], choices=["largest", "middle"],
                    help="architectures of the policy-only arms (one arm each)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    project = setup_project(args)
    full = project.problem()
    problems = {"joint": full, **{f"policy-only-{how}": fixed_problem(full, how) for how in args.fixed}}
    ideal, ref = full.hv_reference()  # the whole space's normalization, for every arm
    baselines = {how: evaluate_baselines(full, problems[f"policy-only-{how}"], how, args, t0) for how in args.fixed}
    runs = []
    for seed in args.seeds:
        run = {"seed": seed, "arms": {}}
        for arm, problem in problems.items():
            run["arms"][arm] = search_arm(project, problem, args, arm, seed, ideal, ref, baselines, t0)
        runs.append(run)
        print(f"[{time.time() - t0:6.0f}s] seed {seed}: hypervolume "
              + ", ".join(f"{arm} {rec['hv']:.4f}" for arm, rec in run["arms"].items()), flush=True)
    result = summarize(runs, args, project, problems, baselines, ideal, ref, t0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "repro_simq.json", result)
    atomic_write_bytes(out / "repro_simq.png", plot(runs, args, baselines, result))
    print(f"{result['headline']}\nwrote {out / 'repro_simq.json'} and {out / 'repro_simq.png'} "
          f"({result['wall_time_s']:.0f} s)")
    return 0


# ------------------------------------------------------------------------------------------ project and problems
def setup_project(args):
    """The run folder's project: mbv2-tiny at 32x32 on ort-cpu, the shipped LUT, the arms' search section."""
    from importlib.resources import files

    from bitnas.cli import main as cli
    from bitnas.project import Project

    work = Path(args.work)
    if not (work / "project.yaml").exists():
        assert cli(["init", str(work), "--space", "mbv2-tiny", "--target", "ort-cpu", "--image-size", "32"]) == 0
        cfg = yaml.safe_load((work / "project.yaml").read_text())
        cfg["seed"] = 0
        cfg["train"]["epochs"] = args.epochs
        cfg["lut"]["path"] = str(files("bitnas.latency_luts") / "ort-cpu_mbv2-tiny.json")
        cfg["lut"]["force"] = True  # measured on another machine: its figures, used as they are
        (work / "project.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    base = Project.load(work)
    if base.cfg.train.epochs != args.epochs or base.cfg.family.space != "mbv2-tiny":
        raise SystemExit(f"{work}: a project of {base.cfg.family.space}, {base.cfg.train.epochs} epochs; pass "
                         "another --work")
    return searcher_project(base, args)


def searcher_project(project, args, seed: int | None = None):
    """The project with this benchmark's search section (``seed`` changes the searcher's seed only: the
    supernet and the calibration batches stay the project's)."""
    from bitnas.config import validate_config
    from bitnas.project import Project, ProjectConfig

    cfg = project.cfg.model_dump(mode="json")
    cfg["search"].update({"searcher": "linas", "budget": args.budget, "pop_size": args.pop_size,
                          "options": {"batch_size": args.batch_size}, "objectives": ["accuracy", "latency_ms"],
                          "constraints": {}, "evaluation": args.evaluation, "qaft": None})
    if seed is not None:
        cfg["seed"] = seed
    return Project(validate_config(ProjectConfig, cfg, project.source), project.run.root, project.source,
                   base=project.base)


def fixed_problem(full, how: str):
    """The full problem with the architecture fixed: same supernet weights, data, LUT, calibration, objectives."""
    from bitnas.problem import problem_id

    space = fixed_arch_space(full.space, how)
    ident = {k: v for k, v in full.problem.items() if k != "hash"}
    ident["space"] = space.name
    return replace(full, supernet=FixedArchSupernet(full.supernet, space), problem=problem_id(ident), _scorer=None)


def evaluate_baselines(full, fixed, how, args, t0) -> dict:
    """The fixed architecture at all-FP32 and all-INT8 (SimQ's baselines), not counted in any budget."""
    from bitnas.searchers import Study

    study = Study(Path(args.work) / f"baselines.{full.problem['hash']}.sqlite", full.problem)
    out = {}
    arch = fixed.space.largest().arch_dict
    for name, bits in (("fp32", (32, 32)), ("int8", (8, 8))):
        c = full.space.make(arch, {g.name: bits for g in full.space.policy_genes})
        obj = study.get(c.id)
        if obj is None:
            start = time.time()
            obj = full.evaluate(c)
            study.add(c, full.space.encode(c), obj, time.time() - start)
        out[name] = {"id": c.id, **obj}
        print(f"[{time.time() - t0:6.0f}s] baseline {how} architecture {name}: accuracy {obj['accuracy']:.4f}, "
              f"latency {obj['latency_ms']:.4f} ms", flush=True)
    study.close()
    return out


# ------------------------------------------------------------------------------------------ search and scoring
def search_arm(project, problem, args, arm, seed, ideal, ref, baselines, t0) -> dict:
    from bitnas.problem import normalized_hv
    from bitnas.searchers import Study, non_dominated, run_search

    searcher = searcher_project(project, args, seed).make_searcher(problem)
    name = f"study.{arm}.{args.evaluation}.p{args.pop_size}b{args.batch_size}.seed{seed}.sqlite"
    study = Study(Path(args.work) / name, problem.problem)
    start = time.time()

    def progress(n: int, total: int, obj: dict) -> None:
        print(f"[{time.time() - t0:6.0f}s] seed {seed} {arm}: {n}/{total} accuracy {obj['accuracy']:.4f} "
              f"latency {obj['latency_ms']:.4f} ms", flush=True)

    evals = run_search(searcher, problem.evaluate, args.budget, study, progress)[: args.budget]
    study.close()
    F = np.array([problem.minimization(e.objectives) for e in evals])
    curve = [normalized_hv(F[: i + 1], ideal, ref) for i in range(len(F))]
    front = [e for e, m in zip(evals, non_dominated(F)) if m]
    front.sort(key=lambda e: e.objectives["latency_ms"])
    at_baseline = {}
    for how, base in baselines.items():
        at_baseline[how] = {}
        for drop in DROPS:
            level = base["int8"]["accuracy"] - drop
            ok = [e for e in front if e.objectives["accuracy"] >= level - 1e-12]
            best = min(ok, key=lambda e: e.objectives["latency_ms"]) if ok else None
            at_baseline[how][f"{drop:.3f}"] = None if best is None else {
                "accuracy_level": level, "id": best.candidate.id, "accuracy": best.objectives["accuracy"],
                "latency_ms": best.objectives["latency_ms"],
                "speedup_vs_int8_baseline": base["int8"]["latency_ms"] / best.objectives["latency_ms"],
                "speedup_vs_fp32_baseline": base["fp32"]["latency_ms"] / best.objectives["latency_ms"]}
    return {"study": str(Path(args.work) / name), "evaluations": len(evals), "hv": curve[-1] if curve else 0.0,
            "hv_curve": curve, "search_wall_s": time.time() - start,
            "true_eval_s": float(sum(e.wall_time_s for e in evals)),
            "fastest_at_int8_baseline_accuracy": at_baseline,
            "front": [{"id": e.candidate.id, **e.objectives, "architecture": e.candidate.arch_dict,
                       "int8_layers": sum(b == (8, 8) for b in e.candidate.policy_dict.values())} for e in front],
            "evaluated": [{"id": e.candidate.id, **e.objectives} for e in evals]}


def summarize(runs, args, project, problems, baselines, ideal, ref, t0) -> dict:
    from bitnas.fingerprint import same_device

    arms = list(problems)
    full = problems["joint"]
    hv = {arm: [r["arms"][arm]["hv"] for r in runs] for arm in arms}
    mean = {arm: float(np.mean(v)) for arm, v in hv.items()}
    wins = {arm: sum(r["arms"]["joint"]["hv"] > r["arms"][arm]["hv"] for r in runs) for arm in arms if arm != "joint"}
    speed = {}  # per fixed architecture: the fastest front member at its INT8 accuracy (less a drop), per arm
    for how in baselines:
        speed[how] = {}
        for drop in DROPS:
            k = f"{drop:.3f}"
            per = {arm: [None if (m := r["arms"][arm]["fastest_at_int8_baseline_accuracy"][how][k]) is None
                         else m["speedup_vs_int8_baseline"] for r in runs] for arm in arms}
            speed[how][k] = {arm: (float(np.mean([v for v in vs if v is not None]))
                                   if any(v is not None for v in vs) else None) for arm, vs in per.items()}
            speed[how][k]["per_seed"] = per
    n = len(runs)
    beaten = sum(w == n for w in wins.values())
    verdict = ("reproduced here (joint front better than every policy-only front in every seed)" if beaten == len(wins)
               else "not reproduced here" if all(w == 0 for w in wins.values()) else
               "mixed here (" + ", ".join(f"joint better than {a} in {w}/{n} seeds" for a, w in wins.items()) + ")")

    def fmt(v):
        return "none reaches it" if v is None else f"{v:.2f}x"

    parts = []
    for how in baselines:
        s0 = speed[how]["0.000"]
        parts.append(f"at the {how} architecture's INT8 accuracy ({baselines[how]['int8']['accuracy']:.4f}) the "
                     f"fastest joint model is {fmt(s0['joint'])} faster than that INT8 baseline, the fastest "
                     f"policy-only-{how} model {fmt(s0[f'policy-only-{how}'])}")
    headline = (f"SimQ-NAS (joint vs policy-only, LINAS, {args.evaluation}, accuracy + LUT latency, {args.budget} "
                f"evaluations each, {n} seed(s)): hypervolume " + ", ".join(f"{a} {v:.4f}" for a, v in mean.items())
                + "; " + "; ".join(parts) + f"; {verdict}. Paper: joint clearly better than policy-only (Fig. 3, "
                "plot, model size); joint fronts 1.12-2.30x faster than the INT8 baseline at its accuracy")
    lut = full.lut
    here = project.target.make_backend(threads=1).fingerprint()
    return {
        "command": " ".join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "paper": "SimQ-NAS (papers/001)", "paper_claim": PAPER_CLAIM,
        "bitnas_figure": {"hv_mean": mean, "joint_wins": {a: f"{w}/{n}" for a, w in wins.items()},
                          "speedup_vs_int8_baseline_at_its_accuracy_minus": speed, "verdict": verdict},
        "headline": headline,
        "setup": {
            "space": full.space.name, "data": "digits 32x32 (val split for accuracy)", "target": "ort-cpu",
            "spaces": {arm: {"name": pr.space.name, **pr.space.cardinality()} for arm, pr in problems.items()},
            "fixed_architectures": {how: problems[f"policy-only-{how}"].space.largest().arch_dict for how in baselines},
            "lut": {"path": str(full.lut_path), "space": lut.space, "target": lut.target,
                    "measured_on": lut.fingerprint,
                    "differs_from_this_machine_in": {d: {"table": lut.fingerprint.get(d), "here": here.get(d)}
                                                     for d in same_device(lut.fingerprint, here)},
                    "note": "the shipped table, used as is (lut.force): measured on the machine it names, not "
                            "this one; nothing is timed by this script"},
            "objectives": ["accuracy", "latency_ms"], "evaluation": args.evaluation,
            "searcher": {"name": "linas", "pop_size": args.pop_size, "batch_size": args.batch_size,
                         "init": "cheap-front (the searcher's default)"},
            "budget_per_arm": args.budget, "seeds": args.seeds, "supernet_epochs": args.epochs,
            "hv_normalization": {"ideal": ideal.tolist(), "reference_point": ref.tolist(),
                                 "accuracy_reference": full.accuracy_reference,
                                 "rows": "minimization rows [-accuracy, latency_ms]",
                                 "note": "the whole space's extremes, for every arm"},
        },
        "baselines": baselines,
        "hypervolume": {"per_seed": hv, "mean": mean},
        "runs": runs,
        "wall_time_s": time.time() - t0,
    }


def plot(runs, args, baselines, result) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(runs[0]["arms"])
    palette = ["tab:red", "tab:blue", "tab:green", "tab:purple"]
    colours = dict(zip(arms, palette))
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(5.5 * (len(runs) + 1), 4.6), squeeze=False)
    axes = axes[0]
    for ax, run in zip(axes, runs):
        for arm, c in colours.items():
            rec = run["arms"][arm]
            pts = np.array([[e["latency_ms"], e["accuracy"] * 100] for e in rec["evaluated"]])
            ax.scatter(pts[:, 0], pts[:, 1], s=12, alpha=0.4, color=c)
            fr = np.array([[e["latency_ms"], e["accuracy"] * 100] for e in rec["front"]])
            ax.step(fr[:, 0], fr[:, 1], where="post", color=c, label=f"{arm} (hv {rec['hv']:.3f})")
            ax.scatter(fr[:, 0], fr[:, 1], color=c, s=28)
        for how, mk in zip(baselines, ("D", "s")):
            for name, face in (("int8", "k"), ("fp32", "none")):
                b = baselines[how][name]
                ax.scatter([b["latency_ms"]], [b["accuracy"] * 100], marker=mk, s=60, edgecolors="k",
                           facecolors=face, label=f"{how} architecture, all {name.upper()}")
        ax.set_xlabel("LUT latency (ms, shipped ort-cpu table)")
        ax.set_ylabel("top-1 on val (%), INC PTQ on ORT" if args.evaluation == "inc-ptq" else "top-1 on val (%)")
        lo = min(min(e["accuracy"] for e in r["front"]) for r in run["arms"].values()) * 100
        ax.set_ylim(max(lo - 1.5, 0), 100.3)
        ax.set_title(f"seed {run['seed']}: every evaluation (dots) and front")
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[-1]
    for arm, c in colours.items():
        C = np.array([r["arms"][arm]["hv_curve"] for r in runs])
        x = np.arange(1, C.shape[1] + 1)
        ax.plot(x, C.mean(0), color=c, label=f"{arm} (mean of {len(runs)})")
        if len(runs) > 1:
            ax.fill_between(x, C.min(0), C.max(0), color=c, alpha=0.15)
    ax.set_xlabel("true evaluations")
    ax.set_ylabel("hypervolume (normalized, fixed reference)")
    ax.set_title("hypervolume against evaluations (band: min-max)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="center right")
    fig.suptitle("SimQ-NAS reproduction on digits: joint architecture + INT8/FP32 policy search vs policy-only "
                 "search on fixed architectures, LINAS", fontsize=10)
    fig.tight_layout()
    from bitnas.plots import figure_png

    return figure_png(fig, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
