"""A once-for-all supernet at 224x224 (MobileNetV3 w1.0, or ResNet-50 with ``--family resnet``): import,
profile, search, compile; is the knee's LUT prediction what its artifact measures?

For each target (ONNX Runtime, OpenVINO with f32 pinned, or TVM; batch 1, ``--threads`` intra-op
threads, 1 by default, for profiling and Verify alike) the script writes a
once-for-all checkpoint of random weights under ``ofa``'s own keys (latency does not depend on the weights),
runs ``bitnas import-supernet --image-size 224 --epochs 0``, ``bitnas profile`` (every layer at FP32 and
INT8, every fusion unit whole, network-level correction fitted on ``--calibrate`` subnets), ``bitnas
search`` on latency and size (NSGA-II, LUT only), ``bitnas compile --pick knee`` (INC static PTQ, Verify on
ONNX Runtime, OpenVINO and the target's own runtime), and compares the knee's predicted latency with the latency Verify measured on
the target's own runtime (same statistic, p10). Optionally ``--validate N`` also runs ``bitnas lut
validate`` on N subnets. Run it on an idle machine: it times things (about 40 minutes).

    python benchmarks/ofa_224_latency.py --out benchmarks/results [--targets ort-cpu openvino-cpu tvm-llvm]
        [--family mbv3|resnet] [--threads N] [--skip-compile]

writes ``ofa_224_latency.json`` (MobileNetV3) or ``ofa_224_latency.resnet.json``, keeping the rows of other
targets and thread counts already there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

RUNTIME = {"ort-cpu": "ort", "openvino-cpu": "openvino", "tvm-llvm": "tvm"}


def run(cmd: list[str], log: Path) -> str:
    """Run a bitnas command; its progress goes to ``log``, its stdout is returned."""
    print("+", " ".join(cmd), flush=True)
    with log.open("a") as err:
        err.write(f"\n+ {' '.join(cmd)}\n")
        err.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return proc.stdout


# --family -> (import format, space, checkpoint file name as once-for-all names it)
FAMILY = {"mbv3": ("ofa-mbv3", "ofa-mbv3-w1.0", "ofa_mbv3_d234_e346_k357_w1.0.pth"),
          "resnet": ("ofa-resnet", "ofa-resnet50", "ofa_resnet50_d=0,1,2_e=0.2,0.25,0.35_w=0.65,0.8,1.0.pth")}


def write_checkpoint(path: Path, space: str) -> None:
    """A random-weight once-for-all supernet state dict under the ofa package's keys, its classifier for the
    10 digits classes (used as it is: epochs 0)."""
    import torch

    from bitnas.supernets.families import build_supernet

    torch.manual_seed(0)
    net = build_supernet(space, in_channels=3, image_size=224, num_classes=10)  # the data's classes
    torch.save({"state_dict": net.state_dict()}, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--work", default="/tmp/bitnas-ofa224", help="run folders (LUTs, artifacts)")
    ap.add_argument("--targets", nargs="+", default=["ort-cpu", "openvino-cpu"])
    ap.add_argument("--calibrate", type=int, default=40)
    ap.add_argument("--validate", type=int, default=0, help="also lut validate on N subnets (0: skip)")
    ap.add_argument("--budget", type=int, default=400, help="search evaluations (LUT only)")
    ap.add_argument("--family", default="mbv3", choices=sorted(FAMILY))
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads, profiling and Verify alike")
    ap.add_argument("--skip-compile", action="store_true", help="profile and validate only (no search, compile)")
    args = ap.parse_args()
    fmt, space, ckpt_name = FAMILY[args.family]
    out, work = Path(args.out), Path(args.work) / args.family
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = work / ckpt_name
    if not ckpt.exists():
        write_checkpoint(ckpt, space)
    tag = "" if args.family == "mbv3" else f".{args.family}"
    rows = []
    for target in args.targets:
        run_dir = work / (target if args.threads == 1 else f"{target}-t{args.threads}")
        log = work / f"{run_dir.name}.log"
        if run_dir.exists():  # this script's own run folder from an earlier run
            shutil.rmtree(run_dir)
        t0 = time.perf_counter()
        run(["bitnas", "import-supernet", "--format", fmt, "--checkpoint", str(ckpt), "--out", str(run_dir),
             "--target", target, "--image-size", "224", "--epochs", "0", "--force"], log)
        cfg_path = run_dir / "project.yaml"
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["lut"] = {**cfg.get("lut", {}), "blocks": True, "statistic": "p10", "threads": args.threads}
        cfg["search"] = {"searcher": "nsga2", "budget": args.budget, "pop_size": 40,
                         "objectives": ["latency_ms", "size_bytes"]}
        cfg["compile"] = {"passes": ["ExtractSubnet", {"RecalibrateBn": {"batches": 2}}, "ExportOnnx",
                                     "AssignBitwidths", {"IncStaticPtq": {"calibration_batches": 2}},
                                     {"Verify": {"backends": list(dict.fromkeys(["ort", "openvino", RUNTIME[target]])),
                                                 "repeats": 200, "threads": args.threads}}, "Package"]}
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        t1 = time.perf_counter()
        run(["bitnas", "profile", "--project", str(run_dir), "--calibrate", str(args.calibrate)], log)
        profile_s = time.perf_counter() - t1
        lut = json.loads((run_dir / "lut.json").read_text())
        row = {"target": target, "space": space, "input": [1, 3, 224, 224], "threads": args.threads,
               "statistic": "p10", "profile_and_calibrate_s": round(profile_s, 1),
               "layer_entries": len(lut["entries"]), "block_entries": len(lut.get("blocks") or {}),
               "calibration_subnets": args.calibrate}
        if args.validate:
            report = json.loads(run(["bitnas", "lut", "validate", "--lut", str(run_dir / "lut.json"), "--project", str(run_dir), "--samples",
                                     str(args.validate), "--plot", str(out / f"ofa224{tag}_{run_dir.name}.validate.png"),
                                     "--json"], log))
            row["validate"] = {k: report[k] for k in ("samples", "mape", "kendall_tau", "within_10pct",
                                                      "repeatability", "measured_range_ms")}
        if args.skip_compile:
            row["total_s"] = round(time.perf_counter() - t0, 1)
            row["loadavg_after"] = os.getloadavg()[0]
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
            continue
        t2 = time.perf_counter()
        run(["bitnas", "search", "--project", str(run_dir)], log)
        run(["bitnas", "compile", "--project", str(run_dir), "--pick", "knee"], log)
        row["search_and_compile_s"] = round(time.perf_counter() - t2, 1)
        arts = sorted((run_dir / "artifacts").iterdir(), key=lambda p: p.stat().st_mtime)
        man = json.loads((arts[-1] / "manifest.json").read_text())
        pred = float(man["predicted"]["latency_ms"])
        meas = man["measured"][RUNTIME[target]]
        int8 = sum(1 for b in man["candidate"]["policy"].values() if list(b) == [8, 8])
        row["knee"] = {"candidate": man["candidate"]["id"], "int8_layers": int8,
                       "layers": len(man["candidate"]["policy"]), "predicted_ms": pred,
                       "measured_ms": meas["latency_ms"], "measured_median_ms": meas["latency_ms_median"],
                       "measured_iqr_ms": meas["latency_iqr_ms"], "error_pct": 100 * (pred - meas["latency_ms"])
                       / meas["latency_ms"], "int8_to_fp32": meas["latency_ratio_to_fp32"],
                       "other_runtime": {b: man["measured"][b]["latency_ms"] for b in ("ort", "openvino")
                                         if b != RUNTIME[target]}}
        row["total_s"] = round(time.perf_counter() - t0, 1)
        row["loadavg_after"] = os.getloadavg()[0]
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    for row in rows:
        row["command"] = command
    path = out / f"ofa_224_latency{tag}.json"
    if path.exists():  # rows of other targets and thread counts stay
        done = {(r["target"], r.get("threads", 1)) for r in rows}
        rows = [r for r in json.loads(path.read_text())["rows"] if (r["target"], r.get("threads", 1)) not in done] + rows
    result = {"command": command, "goal": "knee artifact's measured latency within 10% of its LUT prediction; "
              "LUT: within_10pct >= 0.95 and Kendall tau >= 0.9", "rows": rows}
    path.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
