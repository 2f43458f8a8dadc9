"""How fast the cheap objectives score candidates: one at a time against batched, and what a search gains.

For the demo space (``mbv2-tiny``) and each LUT that ships with bitnas, on one core (the process is pinned
to CPU 0):

- LUT load time (``LatencyTable.load`` and the first prediction, which used to refit the fusion model);
- one at a time: ``layers()`` + ``LatencyTable.predict`` + size per ``Candidate``, as ``Problem.cheap`` does;
- batched: ``BatchScorer.score`` of ordinal gene rows (latency + size): the first batch (which fills the unit
  tables) and then warm batches; the scorer's own build time (probing + self-check) apart;
- one LINAS round (inner NSGA-II of 80 x 30) and one APQ evolution round with the batched evaluator and with a
  plain one-at-a-time function, same seed.

Every timing is the median of ``--repeats`` runs; the spread (min-max) is reported with it.

    python benchmarks/scoring.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np


def timed(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def search_round(name: str, cheap, space, seed: int = 0) -> float:
    """Seconds of the first model-based ``ask`` after a random first population (accuracy made up)."""
    from bitnas.api import Objective
    from bitnas.searchers import SEARCHERS
    from bitnas.searchers.base import cheap_rows

    objectives = [Objective("accuracy", "max", cheap=False), Objective("latency_ms", "min"),
                  Objective("size_bytes", "min")]
    options = {"inner_pop": 80, "inner_gens": 30} if name == "linas" else {}
    s = SEARCHERS.get(name)(space, objectives, seed=seed, cheap=cheap, pop_size=20, **options)
    first = s.ask()
    X = np.array([space.encode(c) for c in first])
    v = cheap_rows(cheap, space, X)
    acc = np.random.default_rng(seed).uniform(0.5, 1.0, len(first))
    s.tell(first, np.column_stack([-acc, v["latency_ms"], v["size_bytes"]]))
    t = time.perf_counter()
    s.ask()
    return time.perf_counter() - t


def bench(lut_path: Path, net, args) -> dict:
    """One LUT's row: load, one at a time, batched, search rounds."""
    from bitnas.latency_luts.lut import LatencyTable
    from bitnas.scoring import BatchScorer
    from bitnas.searchers.base import CheapEvaluator

    space = net.space
    print(f"{lut_path.name}:", flush=True)
    load = timed(lambda: LatencyTable.load(lut_path), args.repeats)
    probe = net.layers(space.smallest())

    def load_and_predict():
        LatencyTable.load(lut_path).predict(probe)

    first_predict = timed(load_and_predict, args.repeats)
    lut = LatencyTable.load(lut_path)
    rng = np.random.default_rng(0)
    cands = [space.sample(rng) for _ in range(args.one)]

    def one_by_one():
        fresh = LatencyTable.load(lut_path)  # no unit memo carried over between repeats
        for c in cands:
            layers = net.layers(c)
            fresh.predict(layers)
            sum(s.size_bytes for s in layers)

    one = timed(one_by_one, args.repeats)
    t = time.perf_counter()
    scorer = BatchScorer(space, net.layers, lut, ["latency_ms", "size_bytes"])
    build_s = time.perf_counter() - t
    X = np.random.default_rng(1).integers(0, space.upper_bounds() + 1, size=(args.batch, space.n_genes))
    t = time.perf_counter()
    scorer.score(X)
    cold_s = time.perf_counter() - t
    warm = timed(lambda: scorer.score(X), args.repeats)
    # the same candidates both ways: the batch agrees with one at a time
    check = X[:200]
    got = scorer.score(check)["latency_ms"]
    want = np.array([lut.predict(net.layers(space.decode(x)))["latency_ms"] for x in check])
    one_rate = args.one / one["median_s"]
    warm_rate = args.batch / warm["median_s"]
    print(f"  load {load['median_s'] * 1e3:.1f} ms, load + first predict {first_predict['median_s'] * 1e3:.1f} ms;"
          f" one at a time {one_rate:,.0f}/s; batched: build {build_s:.2f} s, first batch "
          f"{args.batch / cold_s:,.0f}/s, warm {warm_rate:,.0f}/s ({warm_rate / one_rate:.0f}x)", flush=True)

    def plain(c, _lut=lut):
        layers = net.layers(c)
        return {"latency_ms": _lut.predict(layers)["latency_ms"], "size_bytes": sum(s.size_bytes for s in layers)}

    def batched(X, _s=scorer):
        return _s.score(X)

    rounds = {}
    for name in ("linas", "evolution"):
        rounds[name] = {"batched_s": search_round(name, CheapEvaluator(plain, batched), space),
                        "one_at_a_time_s": search_round(name, plain, space)}
        print(f"  {name} round: batched {rounds[name]['batched_s']:.2f} s, one at a time "
              f"{rounds[name]['one_at_a_time_s']:.2f} s", flush=True)
    return {"lut": lut_path.name, "entries": len(lut.entries), "blocks": len(lut.blocks),
            "calibrated": bool(lut.calibration), "load": load, "load_and_first_predict": first_predict,
            "one_at_a_time": {**one, "candidates": args.one, "per_s": one_rate},
            "batched": {"build_s": build_s, "first_batch_s": cold_s, "first_batch_per_s": args.batch / cold_s,
                        "warm": warm, "candidates": args.batch, "per_s": warm_rate, "exact": scorer.exact,
                        "max_abs_diff_ms": float(np.abs(got - want).max())},
            "search_round": rounds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--one", type=int, default=2000, help="candidates scored one at a time")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.sched_setaffinity(0, {0})
    import torch

    torch.set_num_threads(1)

    from bitnas.fingerprint import device_fingerprint
    from bitnas.supernets.families import build_supernet

    root = Path(__file__).resolve().parents[1]
    net = build_supernet("mbv2-tiny", "mbv2", 1, 32, 10)
    space = net.space
    rows = [bench(lut_path, net, args) for lut_path in sorted((root / "latency_luts").glob("*_mbv2-tiny.json"))]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"space": space.name, "cores": 1, "statistic": f"median of {args.repeats}",
              "fingerprint": device_fingerprint(threads=1), "rows": rows,
              "target": {"batched_per_s": 100_000, "load_s": 0.5}}
    (out / "scoring.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "scoring.png")
    print(f"wrote {out / 'scoring.json'} and {out / 'scoring.png'}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["lut"].split("_")[0] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (key, label) in enumerate((("one", "one at a time"), ("cold", "batched, first batch"),
                                      ("warm", "batched, warm"))):
        vals = [r["one_at_a_time"]["per_s"] if key == "one" else r["batched"]["first_batch_per_s"] if key == "cold"
                else r["batched"]["per_s"] for r in rows]
        ax[0].bar(x + (i - 1) * 0.27, vals, 0.27, label=label)
    ax[0].axhline(result["target"]["batched_per_s"], color="k", ls="--", lw=1, label="target 100k/s")
    ax[0].set_yscale("log")
    ax[0].set_xticks(x, names)
    ax[0].set_ylabel("candidates / s (1 core)")
    ax[0].set_title(f"{result['space']}: latency + size")
    ax[0].legend(fontsize=8)
    for i, (name, key) in enumerate((("LINAS batched", ("linas", "batched_s")),
                                     ("LINAS 1-by-1", ("linas", "one_at_a_time_s")),
                                     ("APQ batched", ("evolution", "batched_s")),
                                     ("APQ 1-by-1", ("evolution", "one_at_a_time_s")))):
        ax[1].bar(x + (i - 1.5) * 0.2, [r["search_round"][key[0]][key[1]] for r in rows], 0.2, label=name)
    ax[1].set_xticks(x, names)
    ax[1].set_ylabel("seconds per search round")
    ax[1].set_title("one model-based round")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
