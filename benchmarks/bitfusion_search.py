"""Joint architecture + mixed-precision search against uniform 8-bit and uniform 4-bit policies on BitFusion,
at equal energy.

One mbv2-tiny supernet trained on the digits (the demo's recipe; weights do not depend on bits, which the
search quantizes after training) is searched three times per energy budget, with the same searcher (APQ's
constrained evolution), seed and number of true evaluations, on the BitFusion ``edge`` LUT (simulated
latency and energy per layer):

- ``joint``: ``bitfusion-mbv2-tiny``, architecture and W/A bits in {2, 4, 8} per layer;
- ``uniform-8``: the same architectures, every layer W8A8;
- ``uniform-4``: the same architectures, every layer W4A4.

Accuracy is the search's own (simulated post-training quantization on the val split). For each budget the
best accuracy found under it is reported. Writes ``bitfusion_search.json`` and ``.png`` to ``--out``.
Run: ``python benchmarks/bitfusion_search.py --out benchmarks/results`` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from bitnas.io import atomic_write_bytes, atomic_write_json

POLICIES = {"joint": None, "uniform-8": ((8, 8),), "uniform-4": ((4, 4),)}


def restricted(net, bits, name):
    """``net``'s supernet with every layer's bit options narrowed to ``bits`` (the same weights)."""
    from bitnas.supernets.mbv2 import MBV2Supernet

    d = replace(net.d, bit_options=tuple(bits), name=name)
    out = MBV2Supernet(d)
    out.load_state_dict(net.state_dict())
    return out.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/bitfusion_search", help="run folder (reused when it exists)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--evaluations", type=int, default=40, help="true evaluations per search")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.15, 0.3, 0.5],
                    help="energy budgets as fractions between the smallest W2A2 and the largest W8A8 subnet")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from bitnas.cli import main as cli
    from bitnas.objectives import resolve
    from bitnas.problem import Problem, problem_id
    from bitnas.project import Project
    from bitnas.searchers import Study, run_search
    from bitnas.searchers.evolution import EvolutionSearcher

    work = Path(args.work)
    if not (work / "project.yaml").exists():
        assert cli(["init", str(work), "--space", "bitfusion-mbv2-tiny", "--target", "bitfusion"]) == 0
        cfg = yaml.safe_load((work / "project.yaml").read_text())
        cfg["seed"] = args.seed
        cfg["train"]["epochs"] = args.epochs
        (work / "project.yaml").write_text(yaml.safe_dump(cfg))
    project = Project.load(work)
    base = project.problem()  # trains (or loads) the supernet and simulates the LUT
    net, lut = base.supernet, base.lut
    e_lo = lut.predict(net.layers(net.space.smallest((2, 2))))["energy_mj"]
    e_hi = lut.predict(net.layers(net.space.largest((8, 8))))["energy_mj"]
    objectives = resolve(["accuracy", "energy_mj"], "benchmark")
    rows = []
    t0 = time.time()
    for frac in args.budgets:
        budget = e_lo + frac * (e_hi - e_lo)
        for kind, bits in POLICIES.items():
            sn = net if bits is None else restricted(net, bits, f"bitfusion-mbv2-tiny-{kind}")
            ident = problem_id({**base.problem, "space": sn.space.name, "constraints": {"energy_mj": budget}})
            problem = Problem(sn, base.data, lut, base.lut_path, base.calib, base.reduce_range, objectives,
                              {"energy_mj": budget}, ident, base.accuracy_reference, seed=base.seed)
            feasible_min = lut.predict(sn.layers(sn.space.smallest(bits[0] if bits else (2, 2))))["energy_mj"]
            rec = {"budget_fraction": frac, "energy_budget_mj": budget, "policy": kind,
                   "smallest_energy_mj": feasible_min}
            if feasible_min > budget:
                rec.update({"best_accuracy": None, "evaluations": 0,
                            "note": "no architecture of this policy fits the budget"})
                rows.append(rec)
                print(f"[{time.time() - t0:5.0f}s] budget {frac:.2f} {kind}: infeasible", flush=True)
                continue
            searcher = EvolutionSearcher(sn.space, objectives, seed=args.seed, constraints={"energy_mj": budget},
                                         cheap=problem.cheap_evaluator, pop_size=10, transfer=False)
            study = Study(work / f"study.{kind}.{frac:.2f}.sqlite", problem.problem)
            evals = run_search(searcher, problem.evaluate, args.evaluations, study)
            study.close()
            ok = [e for e in evals if e.objectives["energy_mj"] <= budget]
            best = max(ok, key=lambda e: e.objectives["accuracy"]) if ok else None
            rec.update({"evaluations": len(evals), "best_accuracy": best.objectives["accuracy"] if best else None,
                        "best_energy_mj": best.objectives["energy_mj"] if best else None,
                        "best_candidate": best.candidate.to_dict() if best else None,
                        "points": [[e.objectives["energy_mj"], e.objectives["accuracy"]] for e in ok]})
            rows.append(rec)
            print(f"[{time.time() - t0:5.0f}s] budget {frac:.2f} ({budget:.4f} mJ) {kind}: best accuracy "
                  f"{rec['best_accuracy']}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "space": "bitfusion-mbv2-tiny (digits, 32x32)", "target": "bitfusion (edge preset)",
              "searcher": "evolution (APQ), transfer off, same seed and evaluations for every policy",
              "accuracy": "simulated post-training quantization on the val split (the search's own measure)",
              "energy_range_mj": [e_lo, e_hi], "rows": rows, "seconds": time.time() - t0}
    atomic_write_json(out / "bitfusion_search.json", result)
    atomic_write_bytes(out / "bitfusion_search.png", plot(rows))
    print(f"wrote {out / 'bitfusion_search.json'}")
    return 0


def plot(rows) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"joint": "tab:red", "uniform-8": "tab:blue", "uniform-4": "tab:green"}
    for kind, c in colours.items():
        rs = [r for r in rows if r["policy"] == kind]
        xs = [r["energy_budget_mj"] * 1e3 for r in rs if r["best_accuracy"] is not None]
        ys = [r["best_accuracy"] * 100 for r in rs if r["best_accuracy"] is not None]
        a1.plot(xs, ys, "o-", color=c, label=kind)
        pts = np.array([p for r in rs for p in r.get("points", [])]).reshape(-1, 2)
        if len(pts):
            a2.scatter(pts[:, 0] * 1e3, pts[:, 1] * 100, s=10, alpha=0.5, color=c, label=kind)
    a1.set_xlabel("energy budget (uJ, BitFusion edge)")
    a1.set_ylabel("best top-1 under budget (%)")
    a1.set_title("accuracy at equal energy")
    a1.legend()
    a2.set_xlabel("energy (uJ)")
    a2.set_ylabel("top-1 (%)")
    a2.set_title("every evaluated candidate under its budget")
    a2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
