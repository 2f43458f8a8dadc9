"""Fidelity check: random subnets measured end to end on the target against the LUT's prediction.

Subnets are drawn across the space's whole predicted-latency range (a large random pool with uniform and
mixed policies, then evenly spaced quantiles of its predictions). Each is exported as the compiler exports
it (BN folded, its policy quantized QDQ by INC, weights below 8 bits re-stored) and all are timed
interleaved. The statistic is the LUT's; the measurement's own repeatability is reported from two
disjoint halves of the rounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bitnas.errors import LutError, UserError
from bitnas.latency_luts.lut import CALIBRATION_CANDIDATES, LatencyTable


def measured_target(name: str):
    """The Target ``name``, which must be measured (not simulated) to be timed end to end."""
    from bitnas.api import TARGETS

    measured = [n for n, t in TARGETS.items() if not t.simulated]
    if name not in TARGETS or TARGETS.get(name).simulated:
        raise UserError(f"--target: '{name}' cannot be measured end to end (known: {', '.join(measured)})")
    return TARGETS.get(name)


def metrics(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    """MAPE (%), Kendall's tau and the share within +-10% of ``pred`` against ``meas``."""
    from scipy.stats import kendalltau

    err = np.abs(pred - meas) / meas
    tau = kendalltau(pred, meas).statistic if len(pred) > 1 else float("nan")
    return {"mape": float(100 * err.mean()), "kendall_tau": float(tau), "within_10pct": float((err <= 0.10).mean())}


def draw_candidates(space, supernet, lut: LatencyTable | None, n: int, seed: int, pool: int = 0,
                    exclude: set[str] | None = None) -> list:
    """``n`` distinct candidates spread evenly over the predicted latency range of a random pool (over the
    range of their multiply-accumulates when there is no table yet)."""
    rng = np.random.default_rng(seed)
    pool = pool or max(20 * n, 200)
    cands, seen = [], set(exclude or ())
    shared = sorted(set.intersection(*(set(map(tuple, g.options)) for g in space.policy_genes)), reverse=True) \
        if space.policy_genes else []
    for i in range(pool):
        c = space.sample(rng)
        # policies: a third uniform at the widest option every layer offers (float where there is one), a
        # third uniform at another shared option (INT8 in a float/INT8 space), a third mixed per layer
        mode = i % 3
        if mode < 2 and shared:
            if mode == 0 or len(shared) == 1:
                bits = shared[0]
            elif len(shared) == 2:
                bits = shared[1]
            else:
                bits = shared[1 + int(rng.integers(len(shared) - 1))]
            c = space.make(c.arch_dict, {g.name: bits for g in space.policy_genes})
        if c.id not in seen:
            seen.add(c.id)
            cands.append(c)
    if lut is None:
        preds = np.array([sum(s.macs for s in supernet.layers(c)) for c in cands], dtype=float)
    else:
        preds = np.array([lut.predict(supernet.layers(c))["latency_ms"] for c in cands])
    order = np.argsort(preds)
    picks = np.unique(np.round(np.linspace(0, len(cands) - 1, n)).astype(int))
    return [cands[order[i]] for i in picks]


def build_subnet_model(supernet, candidate, folder: Path, reduce_range: bool, in_shape: tuple[int, ...]) -> Path:
    """The candidate's ONNX model as the compiler exports it: BN folded, its policy quantized as the compiler
    quantizes it (INT8 QDQ by INC, weights below 8 bits re-stored at their width)."""
    from bitnas.passes.export_onnx import export_static
    from bitnas.passes.subbyte import policy_qdq

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{candidate.id}{'_rr' if reduce_range else ''}.onnx"
    if path.exists():
        return path
    fp32 = folder / f"{candidate.id}_fp32.onnx"
    if not fp32.exists():
        export_static(supernet.extract(candidate), fp32, in_shape)
    bits = {s.name: s.bits for s in supernet.layers(candidate) if s.quantized}
    if not bits:
        return fp32
    rng = np.random.default_rng(0)
    calib = [rng.normal(0, 1, (1, *in_shape)).astype(np.float32) for _ in range(4)]
    policy_qdq(fp32, path, bits, calib, reduce_range)
    return path


def calibration_networks(supernet, samples: int, folder: Path, reduce_range: bool, seed: int = 1000
                         ) -> list[tuple[str, list, Path]]:
    """(candidate id, layers, ONNX path) of ``samples`` subnets for a calibration measured elsewhere (a bundle)."""
    from bitnas.supernets.families import input_shape

    cands = draw_candidates(supernet.space, supernet, None, samples, seed)
    in_shape = input_shape(supernet)
    return [(c.id, supernet.layers(c), build_subnet_model(supernet, c, folder, reduce_range, in_shape))
            for c in cands]


def _measure(backend, supernet, cands, folder: Path, reduce_range: bool, in_shape, warmup: int, repeats: int,
             rounds: int, progress=None) -> dict[str, list[np.ndarray]]:
    from bitnas.backends.base import interleaved_samples
    from bitnas.passes.export_onnx import INPUT_NAME

    runners = {}
    for i, c in enumerate(cands):
        x = {INPUT_NAME: np.random.default_rng(i).normal(0, 1, (1, *in_shape)).astype(np.float32)}
        runners[c.id] = backend.timer(build_subnet_model(supernet, c, folder, reduce_range, in_shape), x)
        if progress:
            progress(i + 1, len(cands), "build")
    return interleaved_samples(runners, warmup, repeats, rounds)


def _check_samples(samples: int, features: tuple[str, ...]) -> None:
    if samples < len(features) + 4:
        raise UserError(f"calibration needs at least {len(features) + 4} subnets (it fits {len(features)} "
                        f"coefficients), not {samples}")


def calibrate(lut: LatencyTable, backend, supernet, samples: int = 24, seed: int = 1000,
              repeats: int = 100, rounds: int = 10, warmup: int = 10,
              workdir: str | Path | None = None, features=None) -> dict[str, Any]:
    """Fit the network-level correction (``features``, or the best of ``CALIBRATION_CANDIDATES`` by
    leave-one-out error; least squares) on subnets measured end to end.

    The subnets (seed ``seed``) are recorded so that ``validate`` never scores the LUT on them.
    """
    import tempfile

    from bitnas.backends.base import Measurement
    from bitnas.supernets.families import input_shape

    _check_samples(samples, tuple(features) if features is not None else min(CALIBRATION_CANDIDATES, key=len))
    base = LatencyTable.from_dict({**lut.to_dict(), "calibration": {}}, lut.source)
    cands = draw_candidates(supernet.space, supernet, base, samples, seed)
    in_shape = input_shape(supernet)
    with tempfile.TemporaryDirectory(prefix="bitnas-calibrate-") as tmp:
        raw = _measure(backend, supernet, cands, Path(workdir) if workdir else Path(tmp),
                       bool(lut.measurement.get("reduce_range", False)), in_shape, warmup, repeats, rounds)
    meas = np.array([Measurement.from_samples(np.concatenate(raw[c.id])).stat(lut.statistic) for c in cands])
    return {**fit_calibration(base, [supernet.layers(c) for c in cands], meas, features),
            "seed": seed, "ids": [c.id for c in cands]}


def fit_calibration(lut: LatencyTable, networks, measured_ms, features=None) -> dict[str, Any]:
    """Least-squares network-level correction of ``lut`` (uncalibrated) from measured whole networks.

    ``networks`` are the layer lists of the measured subnets, ``measured_ms`` their end-to-end latency in
    the table's statistic. With ``features`` None the feature set is the one of ``CALIBRATION_CANDIDATES``
    (those the sample count supports) with the lowest leave-one-out error; the relative error is estimated
    from those leave-one-out residuals. The measurements are kept, so the fit can be redone.
    """
    from bitnas.latency_luts.lut import group_units, network_features

    meas = np.asarray(measured_ms, dtype=float)
    if features is not None:
        sets = [tuple(features)]
    else:
        sets = [tuple(s) for s in CALIBRATION_CANDIDATES if len(meas) >= len(s) + 4]
    _check_samples(len(meas), sets[0] if sets else min(CALIBRATION_CANDIDATES, key=len))
    base = LatencyTable.from_dict({**lut.to_dict(), "calibration": {}}, lut.source)
    per_net = []
    for layers in networks:
        layers = list(layers)
        p = base.predict(layers)
        per_net.append((p["latency_ms"] - base._overhead(), group_units(layers) if base.blocks else [[s] for s in layers]))
    tried = []
    for fs in sets:
        X = np.array([network_features(t, units, fs) for t, units in per_net])
        coef, *_ = np.linalg.lstsq(X, meas, rcond=None)
        hat = X @ np.linalg.pinv(X.T @ X) @ X.T
        loo = (meas - X @ coef) / np.maximum(1 - np.diag(hat), 1e-6)  # leave-one-out residuals
        tried.append((float(np.sqrt(np.mean((loo / meas) ** 2))), fs, coef))
    err, fs, coef = min(tried, key=lambda t: t[0])
    chosen = "" if features is not None else f"; the feature set with the lowest leave-one-out error of {len(sets)}"
    return {"features": list(fs), "coef": [float(c) for c in coef], "samples": len(meas),
            "statistic": lut.statistic, "residual_sd_rel": err, "measured_ms": [float(m) for m in meas],
            "candidates": [{"features": list(f), "loo_rel": e} for e, f, _ in tried],
            "method": "least squares of measured end-to-end latency on the features; sd from leave-one-out" + chosen}


def plot_scatter(pred: np.ndarray, sd: np.ndarray, meas: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.errorbar(meas, pred, yerr=2 * sd, fmt="o", ms=4, alpha=0.7, label="subnet (2 sigma)")
    lo, hi = min(pred.min(), meas.min()) * 0.9, max(pred.max(), meas.max()) * 1.1
    ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="y = x")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="gray", alpha=0.2, label="+-10%")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms, LUT)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def validate(lut_path: str | Path, supernet, samples: int, target: str | None = None,
             threads: int | None = None, repeats: int = 100, rounds: int = 10, warmup: int = 10, seed: int = 1,
             force: bool = False, plot: str | Path | None = None, workdir: str | Path | None = None,
             progress=None) -> dict[str, Any]:
    """Measure ``samples`` subnets of ``supernet`` end to end on the LUT's target and report its fidelity."""
    import tempfile

    from bitnas.backends.base import Measurement
    from bitnas.supernets.families import input_shape

    lut = LatencyTable.load(lut_path)
    target = target or lut.target
    tgt = measured_target(target)
    space_name = supernet.space.name
    if target != lut.target and not force:
        raise LutError(f"{lut_path}: table is for target '{lut.target}', not '{target}'; pass --force-lut to use it")
    if samples < 2 or rounds < 2:
        raise UserError("--samples and --rounds must be at least 2")
    threads = threads or int(lut.measurement.get("threads", 1))
    backend = tgt.make_backend(threads=threads)
    lut.check_device(backend.fingerprint(), force)
    if lut.space and lut.space != space_name and not force:
        raise LutError(f"{lut_path}: table was profiled for space '{lut.space}', not '{space_name}'")
    reduce_range = bool(lut.measurement.get("reduce_range", False))
    cands = draw_candidates(supernet.space, supernet, lut, samples, seed,
                            exclude=set(lut.calibration.get("ids", [])))
    preds = [lut.predict(supernet.layers(c)) for c in cands]
    in_shape = input_shape(supernet)
    stat = lut.statistic
    with tempfile.TemporaryDirectory(prefix="bitnas-validate-") as tmp:
        raw = _measure(backend, supernet, cands, Path(workdir) if workdir else Path(tmp), reduce_range, in_shape,
                       warmup, repeats, rounds, progress)
    meas = np.array([Measurement.from_samples(np.concatenate(raw[c.id])).stat(stat) for c in cands])
    half_a = np.array([Measurement.from_samples(np.concatenate(raw[c.id][0::2])).stat(stat) for c in cands])
    half_b = np.array([Measurement.from_samples(np.concatenate(raw[c.id][1::2])).stat(stat) for c in cands])
    pred = np.array([p["latency_ms"] for p in preds])
    sd = np.array([p.get("latency_sd_ms", 0.0) for p in preds])
    plain = np.array([p.get("latency_layer_sum_ms", p["latency_ms"]) for p in preds])
    uncal = np.array([p.get("latency_uncalibrated_ms", p["latency_ms"]) for p in preds])
    report: dict[str, Any] = {"target": target, "lut": str(lut_path), "space": space_name, "samples": len(cands),
                              "statistic": stat, "threads": threads, "repeats": repeats, "rounds": rounds,
                              **metrics(pred, meas)}
    report["layer_sum_only"] = metrics(plain, meas)
    report["units_without_calibration"] = metrics(uncal, meas)
    report["calibrated"] = bool(lut.calibration)
    report["repeatability"] = {**metrics(half_a, half_b), "note": "half of the rounds against the other half"}
    report["coverage_2sigma"] = float((np.abs(pred - meas) <= 2 * sd).mean())
    report["measured_range_ms"] = [float(meas.min()), float(meas.max())]
    report["subnets"] = [{"id": c.id, "predicted_ms": float(p), "predicted_sd_ms": float(s), "layer_sum_ms": float(q),
                          "measured_ms": float(m), "int8_layers": sum(1 for ls in supernet.layers(c) if ls.quantized),
                          "layers": len(supernet.layers(c))}
                         for c, p, s, q, m in zip(cands, pred, sd, plain, meas)]
    plot_path = Path(plot) if plot else Path(lut_path).with_suffix(".validate.png")
    plot_scatter(pred, sd, meas, f"{target} {space_name}: MAPE {report['mape']:.1f}%, tau {report['kendall_tau']:.2f}, "
                 f"within 10% {report['within_10pct']:.2f}", plot_path)
    report["plot"] = str(plot_path)
    return report
