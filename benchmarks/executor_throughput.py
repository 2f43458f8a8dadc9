"""True evaluations per minute of one search through each executor: in-process, a pool of 1 and 2
processes, a local Ray of 2 actors, on the demo problem (mbv2-tiny on the digits; a trained run folder).

    python benchmarks/executor_throughput.py --project RUN [--budget 24] [--pop-size 8]

RUN is a run folder whose supernet is trained and LUT profiled (``bitnas train`` and ``bitnas profile``);
without it, one is made here (``bitnas init`` at 16x16, 3 epochs, a short profile). Each executor searches
a copy of it from an empty study (random search, the same seed, so the same candidates). Writes
results/executor_throughput.{json,png}: a throughput figure of this machine at its load then, not a
property of the executors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RUNS = (("inprocess", 1), ("pool", 1), ("pool", 2), ("ray", 2))


def prepare(folder: Path) -> Path:
    from bitnas.cli import main

    if not (folder / "lut.json").exists():
        assert main(["init", str(folder), "--space", "mbv2-tiny", "--image-size", "16", "--force"]) == 0
        cfg = yaml.safe_load((folder / "project.yaml").read_text())
        cfg["train"].update({"epochs": 3, "n_random": 1})
        cfg["lut"].update({"warmup": 1, "repeats": 5, "rounds": 1})
        (folder / "project.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train", "--project", str(folder)]) == 0
        assert main(["profile", "--project", str(folder), "--no-blocks", "--repeats", "5", "--rounds", "1",
                     "--warmup", "1"]) == 0
    return folder


def run_one(src: Path, work: Path, kind: str, workers: int, budget: int, pop_size: int) -> dict:
    from bitnas.project import Project

    folder = work / f"{kind}{workers}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("project.yaml", "supernet.pt", "train.json", "lut.json"):
        if (src / name).exists():
            shutil.copy(src / name, folder / name)
    cfg = yaml.safe_load((folder / "project.yaml").read_text())
    cfg["search"].update({"searcher": "random", "budget": budget, "pop_size": pop_size, "calib_batches": 1,
                          "executor": {"kind": kind, "workers": workers}})
    (folder / "project.yaml").write_text(yaml.safe_dump(cfg))
    project = Project.load(folder)
    project.problem()  # the parent's problem is built before the clock starts, as in every run
    t0 = time.time()
    project.search()
    wall = time.time() - t0
    rows = sqlite3.connect(folder / "study.sqlite").execute(
        "SELECT created, wall_time_s FROM evaluations ORDER BY created").fetchall()
    created = [r[0] for r in rows]
    steady = (len(created) - workers) / (created[-1] - created[workers - 1]) * 60 if len(created) > workers else None
    ids = sorted(r[0] for r in sqlite3.connect(folder / "study.sqlite").execute("SELECT id FROM evaluations"))
    return {"executor": kind, "workers": workers, "evaluations": len(rows), "wall_s": round(wall, 2),
            "evals_per_min": round(len(rows) / wall * 60, 2),
            "evals_per_min_after_first": round(steady, 2) if steady else None,
            "mean_eval_s": round(sum(r[1] for r in rows) / len(rows), 3), "candidate_ids": ids}


def plot(results: list[dict], path: Path, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['executor']}\n{r['workers']} worker{'s' if r['workers'] > 1 else ''}" for r in results]
    x = range(len(results))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.bar([i - 0.2 for i in x], [r["evals_per_min"] for r in results], 0.4, label="whole search (startup included)")
    ax.bar([i + 0.2 for i in x], [r["evals_per_min_after_first"] or 0 for r in results], 0.4,
           label="after each worker's first result")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("true evaluations per minute")
    ax.set_title("bitnas search executors, mbv2-tiny on digits", fontsize=10)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, note, fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", help="a trained, profiled run folder (default: made in --work)")
    ap.add_argument("--work", default=str(HERE / "work" / "executor_throughput"))
    ap.add_argument("--budget", type=int, default=24)
    ap.add_argument("--pop-size", type=int, default=8)
    args = ap.parse_args()
    work = Path(args.work)
    load_start = os.getloadavg()
    src = Path(args.project) if args.project else prepare(work / "base")
    results = [run_one(src, work, kind, n, args.budget, args.pop_size) for kind, n in RUNS]
    load_end = os.getloadavg()
    same = len({tuple(r.pop("candidate_ids")) for r in results}) == 1
    note = (f"throughput on a shared {os.cpu_count()}-core machine; load average (1/5/15 min) "
            f"{' '.join(f'{v:.1f}' for v in load_start)} at start, {' '.join(f'{v:.1f}' for v in load_end)} at end")
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "note": note,
           "cpu_count": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": load_end,
           "budget": args.budget, "pop_size": args.pop_size, "same_candidates_everywhere": same,
           "results": results}
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / "executor_throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(results, res / "executor_throughput.png", note)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
