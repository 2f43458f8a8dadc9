"""LUT fidelity on this CPU: predicted vs measured latency of random subnets, per target.

For each measured target that ships a LUT (ort-cpu, openvino-cpu, tvm-llvm) and the space mbv2-tiny (digits shape 1x32x32), runs
``bitnas lut validate`` on the LUT in latency_luts/ (50 subnets across the space's latency range, mixed
INT8/FP32 policies, interleaved, the LUT's statistic) and writes JSON + a scatter plot per target and a
summary. With ``--profile`` the LUTs are measured first (and calibrated with ``--calibrate N``).
``--bundle-venv`` also checks the edge-bundle round trip in a fresh virtual environment that has only
numpy and onnxruntime installed (downloads them from PyPI).

    python benchmarks/lut_fidelity.py --out benchmarks/results [--profile] [--calibrate 48] [--bundle-venv]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE = "mbv2-tiny"
TARGETS_GOAL = {"ort-cpu": True, "openvino-cpu": True, "tvm-llvm": False}  # targets held to the fidelity goal


def shipped_lut(target: str) -> Path:
    return ROOT / "latency_luts" / f"{target}_{SPACE}.json"


def default_targets() -> list[str]:
    """The measured targets of the target table that ship a LUT of the space."""
    from bitnas.api import TARGETS

    return [n for n, t in TARGETS.items() if not t.simulated and shipped_lut(n).exists()]


def run(cmd: list[str]) -> str:
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc.stdout


def bundle_venv(out: Path) -> dict:
    """Export a small bundle, measure it in a fresh venv with only numpy + onnxruntime, import the LUT."""
    from bitnas.latency_luts.bundle import export_bundle, import_results
    from bitnas.latency_luts.profiler import block_items, layer_items
    from bitnas.supernets import build_supernet
    from bitnas.supernets.families import fusion_units

    net = build_supernet(SPACE)
    specs, blocks = net.all_layer_specs(), fusion_units(net)
    items = layer_items(specs[:12], [(32, 32), (8, 8)]) + block_items(blocks[:4], [(32, 32), (8, 8)], 0.0)
    with tempfile.TemporaryDirectory(prefix="bitnas-venv-") as tmp:
        tmp = Path(tmp)
        bundle = tmp / "b.zip"
        export_bundle(items, bundle, False, {"warmup": 5, "repeats": 30, "rounds": 3, "chunk": 64,
                                             "statistic": "p10"}, SPACE)
        t0 = time.time()
        run([sys.executable, "-m", "venv", str(tmp / "venv")])
        py = str(tmp / "venv" / "bin" / "python")
        run([py, "-m", "pip", "install", "-q", "numpy", "onnxruntime"])
        setup_s = time.time() - t0
        freeze = run([py, "-m", "pip", "freeze"]).split()
        runner = tmp / "bundle_runner.py"
        with zipfile.ZipFile(bundle) as zf:
            runner.write_bytes(zf.read("bundle_runner.py"))
        probe = run([py, "-c", "import importlib.util as u; print([m for m in ('torch','bitnas','onnx','scipy') "
                                "if u.find_spec(m)])"]).strip()
        run([py, str(runner), str(bundle), "--runtime", "ort", "--out", str(tmp / "results.json")])
        lut = import_results(bundle, tmp / "results.json", "ort-cpu")
        lut.save(out / "lut_fidelity_bundle_lut.json")
    return {"fresh_venv_packages": freeze, "heavy_modules_importable_in_venv": probe, "venv_setup_s": setup_s,
            "items": len(items), "lut_entries": len(lut.entries), "lut_blocks": len(lut.blocks), "ok": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--targets", nargs="*", default=None,
                    help="targets to validate (default: every measured target with a shipped LUT); none given: only "
                         "the other checks asked for")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--profile", action="store_true", help="measure the LUTs first")
    ap.add_argument("--calibrate", type=int, default=0,
                    help="calibration subnets (with --profile: after profiling; without: refit the shipped LUT)")
    ap.add_argument("--note", default="", help="what the machine was doing while measured")
    ap.add_argument("--bundle-venv", action="store_true")
    args = ap.parse_args()
    if args.targets is None:
        args.targets = default_targets()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from bitnas.fingerprint import device_fingerprint
    from bitnas.io import atomic_write_json

    previous = out / "lut_fidelity.json"
    kept = json.loads(previous.read_text()).get("targets", {}) if previous.exists() else {}
    summary = {"space": SPACE, "input_shape": [1, 1, 32, 32], "samples": args.samples,
               "fingerprint": device_fingerprint(1), "note": args.note,
               "command": "python benchmarks/lut_fidelity.py " + " ".join(sys.argv[1:]),
               "targets": {k: v for k, v in kept.items() if k not in args.targets}}
    for v in summary["targets"].values():
        if "load_average" not in v:  # measured before the runs recorded their own load
            v.setdefault("note", "kept from an earlier run, measured while the CPU was shared (load average 7-12)")
    summary["load_average_start"] = os.getloadavg()
    for t in args.targets:
        lut = shipped_lut(t)
        if args.profile:
            cmd = ["bitnas", "profile", "--target", t, "--space", SPACE, "--out", str(lut),
                   "--repeats", "100", "--rounds", "5"]
            if args.calibrate:
                cmd += ["--calibrate", str(args.calibrate)]
            run(cmd)
        elif args.calibrate:  # refit the shipped table's network-level correction only
            run(["bitnas", "lut", "calibrate", "--lut", str(lut), "--space", SPACE, "--samples",
                 str(args.calibrate)])
        t0 = time.time()
        load_before = os.getloadavg()
        report = json.loads(run(["bitnas", "lut", "validate", "--lut", str(lut), "--space", SPACE,
                                 "--samples", str(args.samples), "--repeats", str(args.repeats), "--rounds",
                                 str(args.rounds), "--json", "--plot", str(out / f"lut_fidelity_{t}.png")]))
        report["seconds"] = time.time() - t0
        atomic_write_json(out / f"lut_fidelity_{t}.json", report)
        keys = ("mape", "kendall_tau", "within_10pct", "coverage_2sigma", "calibrated")
        entry = {k: report[k] for k in keys}
        entry["repeatability"] = {k: report["repeatability"][k] for k in ("mape", "kendall_tau", "within_10pct")}
        entry["layer_sum_only"] = report["layer_sum_only"]
        entry["units_without_calibration"] = report["units_without_calibration"]
        entry["measured_range_ms"] = report["measured_range_ms"]
        entry["load_average"] = {"before": load_before, "after": os.getloadavg()}
        entry["note"] = args.note
        entry["command"] = summary["command"]
        if TARGETS_GOAL.get(t, False):
            entry["meets_targets"] = report["within_10pct"] >= 0.95 and report["kendall_tau"] >= 0.9
        summary["targets"][t] = entry
        print(t, json.dumps(entry), flush=True)
    if args.bundle_venv:
        summary["bundle_fresh_venv"] = bundle_venv(out)
    summary["load_average_end"] = os.getloadavg()
    atomic_write_json(out / "lut_fidelity.json", summary)
    print(json.dumps(summary["targets"], indent=1))


if __name__ == "__main__":
    main()
