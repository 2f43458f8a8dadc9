"""LUT fidelity of every built-in family's CPU space: profile, calibrate, then ``bitnas lut validate``.

For each family's INT8/FP32 space at its digits shape (and, with ``--families mbv2-bomp``, BOMP-NAS's
weight widths {4..8} on MobileNetV2) and each target (ONNX Runtime, OpenVINO), the space is profiled
into a fresh LUT (every distinct layer at every bit option; MobileNetV2 also its inverted-residual
blocks), the network-level correction is fitted on ``--calibrate`` subnets, and 50
other subnets across the space's latency range are measured end to end against the prediction (MAPE,
Kendall tau, share within 10%, and the measurement's own repeatability from two halves of the rounds).
Run it on an idle machine: it times things.

    python benchmarks/family_lut_fidelity.py --out benchmarks/results [--targets ort-cpu openvino-cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lut_fidelity import run  # the same subprocess runner (benchmarks/ is on the path of a script run)

# row name -> (family, space, input size); the four families' INT8/FP32 spaces, and BOMP-NAS's weight
# widths {4..8} with INT8 activations on MobileNetV2 (4-bit weights stored INT4, as the artifact stores them)
SPACES = {"mbv2": ("mbv2", "mbv2-tiny", 32), "mbv3": ("mbv3", "mbv3-tiny", 16),
          "resnet": ("resnet", "ofa-resnet-tiny", 16), "vit": ("vit", "vit-tiny", 16),
          "mbv2-bomp": ("mbv2", "bomp-mbv2-tiny", 32)}
DEFAULT_ROWS = ("mbv2", "mbv3", "resnet", "vit")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--targets", nargs="+", default=["ort-cpu", "openvino-cpu"])
    ap.add_argument("--families", nargs="+", default=list(DEFAULT_ROWS), choices=sorted(SPACES),
                    help="rows to run (family, or family-space variant)")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--calibrate", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=60, help="profile: timed runs per unit model")
    ap.add_argument("--rounds", type=int, default=3, help="profile: interleaved passes the repeats are split into")
    ap.add_argument("--note", default="")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of the existing JSON for the targets and families not rerun")
    args = ap.parse_args()
    out = Path(args.out)
    work = out / "family_luts"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for target in args.targets:
        for fam in args.families:
            family, space, size = SPACES[fam]
            lut = work / f"{target}_{space}.json"
            shape = ["--space", space, "--family", family, "--image-size", str(size)]
            t0 = time.perf_counter()
            run(["bitnas", "profile", "--target", target, *shape, "--out", str(lut), "--statistic", "p10",
                 "--calibrate", str(args.calibrate), "--repeats", str(args.repeats), "--rounds", str(args.rounds)])
            profile_s = time.perf_counter() - t0
            report = json.loads(run(["bitnas", "lut", "validate", "--lut", str(lut), *shape, "--samples",
                                     str(args.samples), "--plot", str(work / f"{target}_{space}.validate.png"),
                                     "--json"]))
            rows.append({"target": target, "family": family, "space": space, "input": [1, 1, size, size],
                         "profile_and_calibrate_s": round(profile_s, 1), "entries": len(json.loads(lut.read_text())
                                                                                        ["entries"]),
                         **{k: report[k] for k in ("samples", "mape", "kendall_tau", "within_10pct", "statistic",
                                                   "threads", "repeatability", "measured_range_ms",
                                                   "layer_sum_only", "units_without_calibration")}})
            r = rows[-1]
            r["loadavg_after"] = os.getloadavg()[0]
            print(f"{target} {space}: MAPE {r['mape']:.1f}% tau {r['kendall_tau']:.3f} within10 "
                  f"{r['within_10pct']:.2f} (repeatability tau {r['repeatability']['kendall_tau']:.3f})", flush=True)
    command = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
    for r in rows:
        r["command"] = command
    path = out / "family_lut_fidelity.json"
    if args.merge and path.exists():
        done = {(r["target"], r["space"]) for r in rows}
        old = [r for r in json.loads(path.read_text())["rows"] if (r["target"], r["space"]) not in done]
        rows = sorted(old + rows, key=lambda r: (r["target"], r["family"], r["space"]))
    summary = {"command": command, "note": args.note, "loadavg_at_end": os.getloadavg()[0],
               "goal": {"within_10pct": 0.95, "kendall_tau": 0.9}, "rows": rows}
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps([{k: r[k] for k in ("target", "space", "mape", "kendall_tau", "within_10pct")} for r in rows],
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
