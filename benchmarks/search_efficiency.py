"""Which searcher finds the front fastest: hypervolume against true evaluations on a project's problem.

Every searcher runs with the same budget of true evaluations for several seeds on one project's problem
(``--project``; by default the embedded project: mbv2-tiny supernet trained on the digits, accuracy with
simulated quantization, LUT latency, size). The work dir is the project's run folder (supernet, LUT).
Accuracy evaluation is deterministic per candidate, so all runs share one cache study keyed by candidate
id; each run still counts every candidate it asks as a true evaluation. Hypervolume uses a fixed
normalization and reference point (``bitnas.problem.Problem.hv_reference``). Also benchmarks the predictors:
APQ transfer (pre-trained on float accuracies) against training from scratch on the same few quantized
samples, plus ridge/SVR/GP/MLP, by MAPE, Kendall tau and pairwise accuracy on held-out candidates.

    python benchmarks/search_efficiency.py --budget 120 --seeds 5 --workers 2

Writes search_efficiency.{json,png} and predictors.json into --results (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
_STATE: dict = {}


def _project(args):
    """The benchmark's project, bound to the work dir: ``--project``, or the default (embedded) project."""
    from bitnas.config import validate_config
    from bitnas.project import Project, ProjectConfig

    if args.project:
        project = Project.load(args.project, root=args.workdir)
        if args.calib_batches is None:
            return project
        cfg = project.cfg.model_dump(mode="json")
        source, base = project.source, project.base
    else:
        cfg, source, base = {"seed": 0}, "<search_efficiency default project>", None
        if args.seed_checkpoint:
            cfg["train"] = {"checkpoint": str(Path(args.seed_checkpoint).resolve())}
        if args.seed_lut:
            cfg["lut"] = {"path": str(Path(args.seed_lut).resolve())}
    cfg.setdefault("search", {})["calib_batches"] = args.calib_batches or 2
    return Project(validate_config(ProjectConfig, cfg, source), args.workdir, source, base=base)


def _problem(args):
    """Build the project's problem once per process (supernet checkpoint and LUT kept in the work dir)."""
    if "problem" not in _STATE:
        import torch

        from bitnas.searchers import Study

        torch.set_num_threads(1)
        work = Path(args.workdir)
        _STATE["project"] = project = _project(args)
        _STATE["problem"] = p = project.problem()
        _STATE["cache"] = Study(work / f"cache-{p.problem['hash']}.sqlite", p.problem)
    return _STATE["problem"], _STATE["cache"]


def make_searcher(name: str, seed: int, problem):
    """Searcher ``name`` with this benchmark's options and ``seed``, built as the project builds its own."""
    from bitnas.project import Project

    project = _STATE["project"]
    opts = dict(SEARCHER_OPTIONS[name])
    search = project.cfg.search.model_copy(update={"searcher": name, "pop_size": opts.pop("pop_size"),
                                                   "options": opts})
    cfg = project.cfg.model_copy(update={"seed": seed, "search": search})
    return Project(cfg, project.run.root, project.source, base=project.base).make_searcher(problem)


def objective_labels(problem) -> list[str]:
    return [("-" if o.sense == "max" else "") + o.name for o in problem.objectives]


def _cached_evaluate(problem, cache):
    def evaluate(c):
        hit = cache.get(c.id)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        obj = problem.evaluate(c)
        for _ in range(20):
            try:
                cache.add(c, problem.supernet.space.encode(c), obj, time.perf_counter() - t0)
                break
            except Exception:  # noqa: BLE001 - the other worker holds the lock; retry
                time.sleep(0.2)
        return obj
    return evaluate


SEARCHER_OPTIONS = {
    "random": {"pop_size": 10},
    "nsga2": {"pop_size": 10},
    "evolution": {"pop_size": 10, "batch_size": 5},
    "linas": {"pop_size": 10, "batch_size": 5},
    "bo": {"pop_size": 10, "batch_size": 5},
    "edmips": {"pop_size": 10, "cost": "latency", "steps": 10, "warm_steps": 3, "batch": 16,
               "etas": (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)},
}


def run_one(task):
    """One (searcher, seed) run; returns its hypervolume after each true evaluation."""
    args, name, seed = task
    from bitnas.problem import normalized_hv
    from bitnas.searchers import Study, run_search

    problem, cache = _problem(args)
    runs = Path(args.workdir) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / f"{name}-{seed}.sqlite"
    path.unlink(missing_ok=True)
    study = Study(path, problem.problem)
    searcher = make_searcher(name, seed, problem)
    t0 = time.perf_counter()
    evals = run_search(searcher, _cached_evaluate(problem, cache), args.budget, study)
    wall = time.perf_counter() - t0
    study.close()
    ideal, ref = problem.hv_reference()
    F = np.array([problem.minimization(e.objectives) for e in evals])
    hv = [normalized_hv(F[: i + 1], ideal, ref) for i in range(len(F))]
    print(f"  {name} seed {seed}: {len(evals)} evaluations, hv {hv[-1]:.4f}, {wall:.0f} s", flush=True)
    return {"searcher": name, "seed": seed, "hv": hv, "wall_s": wall,
            "true_eval_s": float(sum(e.wall_time_s for e in evals))}


def predictor_benchmark(args) -> dict:
    """APQ transfer vs scratch on the same few quantized samples; every predictor on held-out candidates."""
    from bitnas.api import PREDICTORS
    from bitnas.searchers.predictors import make_predictor, metrics, onehot, onehot_columns

    problem, cache = _problem(args)
    evaluate = _cached_evaluate(problem, cache)
    space = problem.supernet.space
    rng = np.random.default_rng(1234)

    def float_cand():
        return space.make(space.sample(rng).arch_dict)  # policy genes default to float

    floats = [float_cand() for _ in range(args.n_float)]
    quant = [space.sample(rng) for _ in range(args.n_quant + args.n_test)]
    y_float = np.array([evaluate(c)["accuracy"] for c in floats])
    y_q = np.array([evaluate(c)["accuracy"] for c in quant])
    train, test = quant[: args.n_quant], quant[args.n_quant:]
    y_tr, y_te = y_q[: args.n_quant], y_q[args.n_quant:]
    X_tr, X_te = onehot(space, train), onehot(space, test)
    arch_cols, all_cols = onehot_columns(space, "arch"), np.arange(space.onehot_size)
    out = {"n_float": args.n_float, "n_quant_train": args.n_quant, "n_test": args.n_test, "seeds": args.seeds,
           "results": {}}
    for seed in range(args.seeds):
        res = {}
        pre = make_predictor("mlp", seed).fit(onehot(space, floats), y_float, columns=arch_cols)
        res["mlp_transfer"] = metrics(y_te, pre.transfer(all_cols, X_tr, y_tr, epochs=60).predict(X_te))
        res["mlp_float_only"] = metrics(y_te, make_predictor("mlp", seed).fit(
            onehot(space, floats), y_float, columns=arch_cols).predict(X_te))
        for kind in PREDICTORS:
            res[f"{kind}_scratch"] = metrics(y_te, make_predictor(kind, seed).fit(X_tr, y_tr).predict(X_te))
        for k, v in res.items():
            out["results"].setdefault(k, []).append(v)
    out["summary"] = {k: {m: {"mean": float(np.mean([r[m] for r in v])), "std": float(np.std([r[m] for r in v]))}
                          for m in v[0]} for k, v in out["results"].items()}
    return out


def summarize(runs, budget):
    by = {}
    for r in runs:
        hv = np.array(r["hv"] + [r["hv"][-1]] * (budget - len(r["hv"])))  # a run that stopped early keeps its hv
        by.setdefault(r["searcher"], []).append(hv)
    curves = {k: np.array(v) for k, v in by.items()}
    target = float(curves["nsga2"][:, -1].mean()) if "nsga2" in curves else None
    summary = {}
    for name, C in curves.items():
        mean = C.mean(axis=0)
        reached = [int(np.argmax(row >= target)) + 1 if target is not None and (row >= target).any() else None
                   for row in C]
        summary[name] = {
            "final_hv_mean": float(mean[-1]), "final_hv_std": float(C[:, -1].std()),
            "evals_to_nsga2_final_mean_hv": {
                "mean_curve": int(np.argmax(mean >= target)) + 1 if target is not None and (mean >= target).any()
                else None,
                "per_seed": reached},
            "hv_at": {str(n): {"mean": float(C[:, n - 1].mean()), "std": float(C[:, n - 1].std())}
                      for n in sorted({10, 20, 30, 40, 50, 60, 80, 100, budget // 3, budget}) if n <= budget},
        }
    if "random" in curves:
        R = curves["random"].mean(axis=0)
        for name, C in curves.items():
            if name != "random":
                m = C.mean(axis=0)
                summary[name]["beats_random_at_every_budget_from"] = next(
                    (n + 1 for n in range(budget) if np.all(m[n:] > R[n:])), None)
    return curves, summary, target


def plot(curves, target, path, budget):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    x = np.arange(1, budget + 1)
    for name, C in curves.items():
        m, s = C.mean(axis=0), C.std(axis=0)
        ax.plot(x, m, label=f"{name} (n={len(C)})")
        ax.fill_between(x, m - s, m + s, alpha=0.15)
    if target is not None:
        ax.axhline(target, color="k", ls=":", lw=1, label=f"nsga2 at {budget}")
        ax.axvline(budget / 3, color="grey", ls="--", lw=1, label="budget / 3")
    ax.set_xlabel("true evaluations")
    ax.set_ylabel("hypervolume (normalized, fixed reference)")
    ax.set_title("search efficiency on the project's problem (mean ± std over seeds)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(args, argv, runs, t0, n_tasks) -> None:
    """Rewrite the JSON and plot with every run finished so far (the file is always complete and valid)."""
    from bitnas.io import atomic_write_json

    runs = sorted(runs, key=lambda r: (r["searcher"], r["seed"]))
    curves, summary, target = summarize(runs, args.budget)
    problem, _ = _problem(args)
    ideal, ref = problem.hv_reference()
    out = {
        "command": "python benchmarks/search_efficiency.py " + " ".join(argv or os.sys.argv[1:]),
        "commands": [*_STATE.get("earlier_commands", []),
                     "python benchmarks/search_efficiency.py " + " ".join(argv or os.sys.argv[1:])],
        "budget": args.budget, "seeds": args.seeds, "runs_done": len(runs), "runs_planned": n_tasks,
        "objectives": objective_labels(problem),
        "hv_normalization": {"ideal": ideal.tolist(), "reference_point": ref.tolist()},
        "nsga2_final_mean_hv": target, "searcher_options": SEARCHER_OPTIONS, "summary": summary,
        "runs": runs, "wall_s": time.time() - t0,
    }
    atomic_write_json(RESULTS / "search_efficiency.json", out)
    plot(curves, target, RESULTS / "search_efficiency.png", args.budget)


def main(argv=None) -> int:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=120)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--searchers", default="random,nsga2,evolution,linas,bo,edmips")
    ap.add_argument("--edmips-seeds", type=int, default=None, help="seeds for edmips (default --seeds)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--project", help="project.yaml (or its run folder) whose problem is searched (default: the "
                                      "embedded digits project)")
    ap.add_argument("--calib-batches", type=int, default=None,
                    help="calibration batches of the problem (default: the project's; 2 for the default project)")
    ap.add_argument("--workdir", default="runs/search_efficiency", help="the project's run folder here")
    ap.add_argument("--seed-checkpoint", default=None, help="default project: use this supernet.pt (train.checkpoint)")
    ap.add_argument("--seed-lut", default=None, help="default project: use this lut.json (lut.path)")
    ap.add_argument("--results", default=str(RESULTS), help="folder the JSON and plots go to")
    ap.add_argument("--n-float", type=int, default=120)
    ap.add_argument("--n-quant", type=int, default=20)
    ap.add_argument("--n-test", type=int, default=60)
    ap.add_argument("--skip-predictors", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="keep the finished runs of results/search_efficiency.json (same budget) that this "
                         "invocation does not redo")
    args = ap.parse_args(argv)
    from bitnas.io import atomic_write_json

    RESULTS = Path(args.results)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _problem(args)  # train / profile once, before the workers fork
    _STATE.pop("cache").close()
    _STATE.clear()
    if not args.skip_predictors:
        res = predictor_benchmark(args)
        res["command"] = "python benchmarks/search_efficiency.py " + " ".join(argv or os.sys.argv[1:])
        atomic_write_json(RESULTS / "predictors.json", res)
        for k, v in res["summary"].items():
            print(f"predictor {k:16s} MAPE {v['mape']['mean']:.2f}%  tau {v['kendall_tau']['mean']:.3f}  "
                  f"pairwise {v['pairwise_accuracy']['mean']:.3f}", flush=True)
        _STATE.clear()
    if args.skip_search:
        return 0
    names = args.searchers.split(",")
    core = [n for n in names if n in ("random", "nsga2", "linas", "bo")]
    rest = [n for n in names if n not in core]
    tasks = [(args, n, s) for s in range(args.seeds) for n in core]  # the goal's searchers first
    tasks += [(args, n, s) for s in range(args.seeds) for n in rest
              if not (n == "edmips" and args.edmips_seeds is not None and s >= args.edmips_seeds)]
    runs: list[dict] = []
    kept_from = RESULTS / "search_efficiency.json"
    if args.merge and kept_from.exists():
        import json

        prev = json.loads(kept_from.read_text())
        if prev.get("budget") != args.budget:
            raise SystemExit(f"--merge: {kept_from} has budget {prev.get('budget')}, not {args.budget}")
        redo = {(n, s) for _, n, s in tasks}
        runs = [r for r in prev["runs"] if (r["searcher"], r["seed"]) not in redo]
        _STATE["earlier_commands"] = prev.get("commands") or [prev.get("command")]
        print(f"--merge: keeping {len(runs)} finished runs", flush=True)
    n_tasks = len(tasks) + len(runs)
    if args.workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(args.workers) as pool:
            for r in pool.imap_unordered(run_one, tasks, chunksize=1):
                runs.append(r)
                write_results(args, argv, runs, t0, n_tasks)
    else:
        for t in tasks:
            runs.append(run_one(t))
            write_results(args, argv, runs, t0, n_tasks)
    _, summary, _ = summarize(runs, args.budget)
    for name, s in summary.items():
        print(f"{name:10s} final hv {s['final_hv_mean']:.4f} ± {s['final_hv_std']:.4f}  "
              f"evals to nsga2's final hv: {s['evals_to_nsga2_final_mean_hv']['mean_curve']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
