"""When does INT8 beat FP32 on this CPU? Whole-network latency ratio INT8/FP32 against batch size.

For the smallest, the largest and a middle architecture of the demo space, the FP32 export and the all-INT8
QDQ artifact (Intel Neural Compressor, the compiler's own passes) are timed interleaved in one run on
ONNX Runtime and OpenVINO, one thread, at several batch sizes; the ratio of their 10th-percentile latencies
is reported. Weights do not affect latency, so the supernet is not trained. The runtimes are the backends of
the measured targets named by ``--targets`` (the target table, ``bitnas targets``).

    python benchmarks/int8_speedup.py --out benchmarks/results [--targets ort-cpu,openvino-cpu]

At ``--size 224`` it runs bitnas's own 224 spaces instead (``--spaces``, default the once-for-all
ProxylessNAS w1.3, MobileNetV3 w1.0 and ResNet-50), each subnet of ``--archs`` (largest; middle) all-INT8,
batch 1: the FP32 export, bitnas's INT8 artifact (the compiler's passes, as ``bitnas compile`` runs them),
ONNX Runtime's own ``quantize_static`` and NNCF's ``nncf.quantize`` on the same FP32 export with the same
calibration images, timed interleaved in one run on ONNX Runtime, OpenVINO with f32 pinned and OpenVINO's
default, ``--runs`` times; each cell is the median of the runs' INT8/FP32 ratios (median latency per model
within a run) and their min-max. Writes ``int8_speedup_224.json``, ``.png`` and ``.md`` (the table). NNCF is
a benchmark-only dependency (``pip install nncf``), not one of bitnas's.

    python benchmarks/int8_speedup.py --size 224 --out benchmarks/results [--spaces ofa-mbv3-w1.0,...]
        [--archs largest,middle] [--tools bitnas,ort-quant,nncf] [--runs 3] [--repeats 60]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch

from bitnas.api import TARGETS
from bitnas.backends import interleaved_timing
from bitnas.backends.ort import kernel_counts
from bitnas.fingerprint import device_fingerprint
from bitnas.io import atomic_write_json
from bitnas.passes import AssignBitwidths, ExportOnnx, IncStaticPtq
from bitnas.passes.export_onnx import INPUT_NAME
from bitnas.pipeline import PassContext
from bitnas.supernets import build_supernet
from bitnas.supernets.data import load_digits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--targets", default="ort-cpu,openvino-cpu", help="measured targets whose runtimes are timed")
    ap.add_argument("--size", type=int, default=32, help="32: the demo space; 224: bitnas's 224 spaces (--spaces)")
    ap.add_argument("--spaces", default=SPACES_224, help="--size 224: spaces timed")
    ap.add_argument("--archs", default="largest", help="--size 224: subnets of each space (largest, middle)")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"--size 224: INT8 artifacts compared ({', '.join(TOOLS)})")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES), help="--size 224: runtimes timed")
    ap.add_argument("--runs", type=int, default=3, help="--size 224: repeats of the whole interleaved comparison")
    ap.add_argument("--rounds", type=int, default=10, help="--size 224: interleaved rounds per run")
    ap.add_argument("--warmup", type=int, default=5, help="--size 224: warm-up calls per model per run")
    ap.add_argument("--calib-batches", type=int, default=2, help="--size 224: calibration batches")
    ap.add_argument("--calib-batch-size", type=int, default=16, help="--size 224: images per calibration batch")
    ap.add_argument("--work", default=None, help="--size 224: keep the built models here and reuse them (a "
                                                 "--build-only run first keeps building out of the timed one)")
    ap.add_argument("--build-only", action="store_true", help="--size 224: build the models into --work, time nothing")
    args = ap.parse_args()
    if args.size != 32:
        if args.repeats == ap.get_default("repeats"):
            args.repeats = 60
        run_spaces(args)
        return
    batches = [int(b) for b in args.batches.split(",")]
    targets = [TARGETS.get(t.strip(), "--targets") for t in args.targets.split(",")]
    for t in targets:
        if t.simulated:
            raise SystemExit(f"--targets: '{t.name}' is simulated; it has no runtime to time")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = load_digits()
    net = build_supernet("mbv2-tiny").eval()
    space = net.space
    mid = space.make({**space.largest().arch_dict, "s0.depth": 2, "s1.depth": 2, "s2.depth": 2,
                      **{g.name: 4 for g in space.arch_genes if g.name.endswith(".expand")},
                      **{g.name: 5 for g in space.arch_genes if g.name.endswith(".kernel")}})
    archs = {"smallest": space.smallest(), "middle": mid, "largest": space.largest()}
    results = {"fingerprint": device_fingerprint(args.threads), "statistic": "p10", "repeats": args.repeats,
               "threads": args.threads, "targets": [t.name for t in targets], "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for label, arch in archs.items():
            cand = space.make(arch.arch_dict, {g.name: (8, 8) for g in space.policy_genes})
            work = Path(tmp) / label
            work.mkdir()
            ctx = PassContext(workdir=work, inputs={"data": data, "candidate": cand})
            fp32 = ExportOnnx().run(net.extract(cand), ctx)
            int8 = IncStaticPtq().run(AssignBitwidths().run(fp32, ctx), ctx)
            macs = sum(s.macs for s in net.layers(cand))
            for target in targets:
                backend_name = target.backend
                backend = target.make_backend(threads=args.threads)
                q, f = backend.compile(int8.path), backend.compile(fp32.path)
                for b in batches:
                    x = data.head("val", b)[0]
                    feed = {INPUT_NAME: np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])))}
                    t = interleaved_timing({"int8": lambda q=q, feed=feed: q(feed),
                                            "fp32": lambda f=f, feed=feed: f(feed)},
                                           warmup=10, repeats=args.repeats, rounds=10)
                    row = {"arch": label, "macs": macs, "target": target.name, "backend": backend_name, "batch": b,
                           "int8_ms": t["int8"].p10_ms, "fp32_ms": t["fp32"].p10_ms,
                           "ratio_int8_to_fp32": t["int8"].p10_ms / t["fp32"].p10_ms}
                    results["rows"].append(row)
                    print(f"{label:8s} {backend_name:8s} batch {b:4d}  int8 {row['int8_ms']:.4f} ms  "
                          f"fp32 {row['fp32_ms']:.4f} ms  ratio {row['ratio_int8_to_fp32']:.2f}", flush=True)
    atomic_write_json(out / "int8_speedup.json", results)
    plot(results, out / "int8_speedup.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = results["targets"]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, target in zip(axes, names):
        for arch in ("smallest", "middle", "largest"):
            rows = [r for r in results["rows"] if r["target"] == target and r["arch"] == arch]
            ax.plot([r["batch"] for r in rows], [r["ratio_int8_to_fp32"] for r in rows], marker="o", label=arch)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_title(f"{target}, {results['threads']} thread")
        ax.legend()
    axes[0].set_ylabel("latency INT8 / FP32 (p10; < 1 means INT8 faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



# ---------------------------------------------------------------------------------------------- 224 mode
# bitnas's own 224 spaces, its INT8 artifact side by side with ONNX Runtime's quantizer and NNCF

SPACES_224 = "ofa-proxyless-w1.3,ofa-mbv3-w1.0,ofa-resnet50"
TOOLS = ("bitnas", "ort-quant", "nncf")
RUNTIMES = ("ort", "openvino-f32", "openvino-default")
YMAX = 1.6  # the plot's ratio axis
GOALS = {"ort": 0.45, "openvino-f32": 0.40, "openvino-default": 0.70}  # issue 13's INT8/FP32 ceilings


def _randomize_bn(net: torch.nn.Module, seed: int = 0) -> None:
    """Random BatchNorm affine parameters: an untrained supernet folds to all-zero biases, which
    ``torch.onnx.export`` deduplicates behind Identity nodes (no trained network looks like that, and ONNX
    Runtime's quantizer then leaves those convolutions float)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))


def _middle(space):
    """Every architecture gene at its middle choice."""
    return space.make({g.name: sorted(g.options)[len(g.options) // 2] for g in space.arch_genes},
                      {g.name: (8, 8) for g in space.policy_genes})


def _bitnas_compile(net, cand, data, work: Path, calib_batches: int, calib_bs: int):
    """The compiler's own passes as ``bitnas compile`` runs them (DEFAULT_PASSES up to Compact; Qaft with 0
    epochs: nothing is trained here; Verify and Package left out): the float export and the INT8 artifact."""
    from bitnas.pipeline import PassContext, Sequential, make_pass

    calib = {"calibration_batches": calib_batches, "calibration_batch_size": calib_bs}
    passes = Sequential([make_pass("ExtractSubnet"),
                         make_pass("RecalibrateBn", {"batches": calib_batches, "batch_size": calib_bs}),
                         make_pass("Qaft", {"epochs": 0}), make_pass("ExportOnnx"), make_pass("AssignBitwidths"),
                         make_pass("IncStaticPtq", calib), make_pass("SubByteWeights"), make_pass("Compact")])
    ctx = PassContext(workdir=work, inputs={"supernet": net, "data": data})
    out = passes.run(cand, ctx)
    return out.float_path, out.path, ctx.results.get("quantization", {})


def _ort_quantize(fp32: Path, dst: Path, calib: list[np.ndarray], reduce_range: bool) -> None:
    """ONNX Runtime's ``quantize_static`` with its defaults (every op type it quantizes), QDQ, per-channel
    symmetric INT8 weights, UINT8 activations, MinMax: bitnas's settings, on the same FP32 export."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from bitnas.passes.inc_ptq import _reader

    quantize_static(str(fp32), str(dst), _reader(CalibrationDataReader, calib, INPUT_NAME),
                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def _nncf_quantize(fp32: Path, dst: Path, calib: list[np.ndarray]) -> None:
    """``nncf.quantize`` on the ONNX model with its defaults (performance preset), the same images, one at a time."""
    import nncf

    samples = [b[i:i + 1] for b in calib for i in range(b.shape[0])]
    q = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset(samples, lambda x: {INPUT_NAME: x}),
                      subset_size=len(samples))
    onnx.save(q, str(dst))


def _file_ops(path: Path) -> dict[str, int]:
    m = onnx.load(str(path), load_external_data=False)
    c = Counter(n.op_type for n in m.graph.node)
    return {k: c[k] for k in ("QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "Add") if c[k]}


def _openvino_backend(threads: int, pinned: bool):
    """bitnas's OpenVINO backend (f32 pinned), or the same without INFERENCE_PRECISION_HINT (OpenVINO's default)."""
    from bitnas.backends.openvino import OpenVinoBackend, import_openvino

    if pinned:
        return OpenVinoBackend(threads=threads)

    class _Default(OpenVinoBackend):
        def _compiled(self, onnx_path):
            ov = import_openvino()
            return ov.Core().compile_model(str(onnx_path), "CPU", {
                "INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})

    return _Default(threads=threads)


def _ov_precisions(backend, path: Path) -> dict[str, int]:
    """OpenVINO's executed graph: nodes per layer type and runtime precision (u8/i8: an integer kernel)."""
    rt = backend._compiled(path).get_runtime_model()
    c: Counter = Counter()
    for op in rt.get_ordered_ops():
        info = op.get_rt_info()
        kind, prec = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
        if kind not in ("Const", "Input", "Output"):
            c[f"{kind}:{prec}"] += 1
    return dict(sorted(c.items()))


def _agreement(fp32: Path, q: Path, x: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and mean cosine similarity of the logits with the FP32 export (ONNX Runtime)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    a = ort.InferenceSession(str(fp32), so, providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]
    b = ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()), "cosine": float(cos.mean())}


def run_spaces(args) -> None:
    """``--size 224``: bitnas's 224 spaces, INT8 artifacts of bitnas, ONNX Runtime's quantizer and NNCF."""
    from bitnas.backends.openvino import import_openvino
    from bitnas.backends.ort import OrtBackend
    from bitnas.passes.inc_ptq import resolve_reduce_range
    from bitnas.supernets.data import with_channels
    from bitnas.supernets.evaluate import calibration_batches
    from bitnas.supernets.families import build_supernet as build_family_supernet

    tools = [t.strip() for t in args.tools.split(",")]
    for t in tools:
        if t not in TOOLS:
            raise SystemExit(f"--tools: unknown '{t}' (have {', '.join(TOOLS)})")
    runtimes = [r.strip() for r in args.runtimes.split(",")]
    for r in runtimes:
        if r not in RUNTIMES:
            raise SystemExit(f"--runtimes: unknown '{r}' (have {', '.join(RUNTIMES)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = with_channels(load_digits(args.size), 3, "int8_speedup")
    calib = [b.numpy() for b in calibration_batches(data, args.calib_batches, args.calib_batch_size, 0)]
    x_check = np.ascontiguousarray(data.head("val", 16)[0])
    feed = {INPUT_NAME: np.ascontiguousarray(data.head("val", 1)[0])}
    reduce_range = resolve_reduce_range("auto")
    ov = import_openvino()
    backends = {"ort": OrtBackend(threads=args.threads)}
    if "openvino-f32" in runtimes:
        backends["openvino-f32"] = _openvino_backend(args.threads, pinned=True)
    if "openvino-default" in runtimes:
        backends["openvino-default"] = _openvino_backend(args.threads, pinned=False)
    results = {
        "command": " ".join(["int8_speedup.py", *sys.argv[1:]]),
        "fingerprint": device_fingerprint(args.threads), "input": [1, 3, args.size, args.size], "batch": 1,
        "threads": args.threads, "statistic": "median latency per model within a run; ratio per run; cells: "
                                              "median of the runs' ratios and their min-max",
        "repeats_per_model_per_run": args.repeats, "rounds": args.rounds, "runs": args.runs,
        "weights": "random (supernet init, BatchNorm affine randomized, BN statistics recalibrated)",
        "calibration": f"{args.calib_batches} x {args.calib_batch_size} digits images, bilinear to {args.size}, "
                       "gray repeated to RGB (the same images for every tool)",
        "reduce_range": reduce_range,
        "openvino_default_precision": str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")),
        "goals": GOALS, "tools": tools, "runtimes": runtimes,
        "models": [], "cells": [],
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = args.work or tmp_dir
        for space_name in [s.strip() for s in args.spaces.split(",")]:
            net = build_family_supernet(space_name, in_channels=3, image_size=args.size, num_classes=10).eval()
            _randomize_bn(net)
            space = net.space
            archs = {"largest": space.largest((8, 8)), "middle": _middle(space)}
            for label in [a.strip() for a in args.archs.split(",")]:
                cand = archs[label]
                work = Path(tmp) / f"{space_name}.{label}"
                built = work / "built.json"
                if built.exists() and set(json.loads(built.read_text())["paths"]) == {"fp32", *tools}:
                    # --work: the artifacts an earlier invocation built with these settings (built untimed)
                    done = json.loads(built.read_text())
                    paths = {k: Path(v) for k, v in done["paths"].items()}
                    quant_info, build_s = done["quantization"], done["build_s"]
                else:
                    if work.exists():
                        shutil.rmtree(work)
                    work.mkdir(parents=True)
                    t0 = time.perf_counter()
                    fp32, bitnas_q, quant_info = _bitnas_compile(net, cand, data, work, args.calib_batches,
                                                                 args.calib_batch_size)
                    paths = {"fp32": fp32}
                    if "bitnas" in tools:
                        paths["bitnas"] = bitnas_q
                    if "ort-quant" in tools:
                        paths["ort-quant"] = work / "ort_quant.onnx"
                        _ort_quantize(fp32, paths["ort-quant"], calib, reduce_range)
                    if "nncf" in tools:
                        paths["nncf"] = work / "nncf.onnx"
                        _nncf_quantize(fp32, paths["nncf"], calib)
                    build_s = time.perf_counter() - t0
                    atomic_write_json(built, {"paths": {k: str(v) for k, v in paths.items()},
                                              "quantization": quant_info, "build_s": build_s})
                if args.build_only:
                    print(f"{space_name} {label}: built in {build_s:.0f} s ({work})", flush=True)
                    continue
                layers = net.layers(cand)
                model = {"space": space_name, "arch": label, "candidate": cand.id, "layers": len(layers),
                         "int8_layers": sum(1 for s in layers if s.bits == (8, 8)),
                         "macs": int(sum(s.macs for s in layers)), "build_s": round(build_s, 1),
                         "quantization": quant_info, "graphs": {}}
                for name, p in paths.items():
                    info = {"file_ops": _file_ops(p), "ort_kernels": kernel_counts(p)}
                    if "openvino-f32" in backends:
                        info["openvino_f32_nodes"] = _ov_precisions(backends["openvino-f32"], p)
                    if name != "fp32":
                        info.update(_agreement(paths["fp32"], p, x_check))
                    model["graphs"][name] = info
                print(f"{space_name} {label}: {model['macs'] / 1e6:.0f} MMACs, built in {build_s:.0f} s; "
                      + ", ".join(f"{n} {g.get('top1_agreement', 1):.2f}/{g.get('cosine', 1):.3f}"
                                  for n, g in model["graphs"].items()), flush=True)
                runners = {f"{rt}|{name}": backends[rt].timer(p, feed) for rt in runtimes for name, p in paths.items()}
                runs = []
                for r in range(args.runs):
                    t = interleaved_timing(runners, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds)
                    row = {k: {"median_ms": m.median_ms, "p10_ms": m.p10_ms, "iqr_ms": m.iqr_ms} for k, m in t.items()}
                    runs.append(row)
                    print(f"  run {r + 1}: " + "  ".join(
                            f"{k} {m.median_ms:.2f}" for k, m in t.items()), flush=True)
                model["runs"] = runs
                results["models"].append(model)
                del runners
                for rt in runtimes:
                    for name in paths:
                        if name == "fp32":
                            continue
                        cell = {"space": space_name, "arch": label, "runtime": rt, "tool": name}
                        for stat in ("median_ms", "p10_ms"):
                            ratios = [run[f"{rt}|{name}"][stat] / run[f"{rt}|fp32"][stat] for run in runs]
                            key = "ratio" if stat == "median_ms" else "ratio_p10"
                            cell[key] = float(np.median(ratios))
                            cell[key + "_min"], cell[key + "_max"] = float(min(ratios)), float(max(ratios))
                            cell[key + "_runs"] = ratios
                        if name != "ort-quant" and "ort-quant" in paths:
                            vs = [run[f"{rt}|{name}"]["median_ms"] / run[f"{rt}|ort-quant"]["median_ms"] for run in runs]
                            cell["vs_ort_quant"] = float(np.median(vs))
                            cell["vs_ort_quant_min"], cell["vs_ort_quant_max"] = float(min(vs)), float(max(vs))
                        cell["fp32_ms"] = float(np.median([run[f"{rt}|fp32"]["median_ms"] for run in runs]))
                        cell["int8_ms"] = float(np.median([run[f"{rt}|{name}"]["median_ms"] for run in runs]))
                        cell["goal"] = GOALS[rt]
                        results["cells"].append(cell)
                        print(f"  {rt:17s} {name:12s} INT8/FP32 {cell['ratio']:.2f} "
                              f"[{cell['ratio_min']:.2f}-{cell['ratio_max']:.2f}]"
                              + (f"  vs ort-quant {cell['vs_ort_quant']:.2f}" if "vs_ort_quant" in cell else ""),
                              flush=True)
                atomic_write_json(out / f"int8_speedup_{args.size}.json", results)  # after every model
    if args.build_only:
        return
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(out / f"int8_speedup_{args.size}.json", results)
    plot_spaces(results, out / f"int8_speedup_{args.size}.png")
    write_table(results, out / f"int8_speedup_{args.size}.md")


def write_table(results: dict, path: Path) -> None:
    """The cells as a markdown table (median of the runs, min-max)."""
    lines = [f"INT8/FP32 latency, batch 1, {results['threads']} thread, {results['input'][2]}x{results['input'][3]}; "
             f"median of {results['runs']} interleaved runs [min-max]; vs ort-quant: latency / ONNX Runtime "
             "quantizer's on the same runtime", "",
             "| space | arch | runtime | tool | INT8/FP32 | goal | vs ort-quant | FP32 ms | INT8 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in results["cells"]:
        vs = (f"{c['vs_ort_quant']:.2f} [{c['vs_ort_quant_min']:.2f}-{c['vs_ort_quant_max']:.2f}]"
              if "vs_ort_quant" in c else "")
        lines.append(f"| {c['space']} | {c['arch']} | {c['runtime']} | {c['tool']} | {c['ratio']:.2f} "
                     f"[{c['ratio_min']:.2f}-{c['ratio_max']:.2f}] | {c['goal']:.2f} | {vs} | {c['fp32_ms']:.2f} | "
                     f"{c['int8_ms']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def plot_spaces(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runtimes = results["runtimes"]
    models = [(m["space"], m["arch"]) for m in results["models"]]
    tools = [t for t in results["tools"]]
    fig, axes = plt.subplots(1, len(runtimes), figsize=(5.2 * len(runtimes), 4.2), sharey=True, squeeze=False)
    width = 0.8 / max(1, len(tools))
    for ax, rt in zip(axes[0], runtimes):
        for j, tool in enumerate(tools):
            xs, ys, lo, hi = [], [], [], []
            for i, (space, arch) in enumerate(models):
                c = next((c for c in results["cells"] if c["space"] == space and c["arch"] == arch
                          and c["runtime"] == rt and c["tool"] == tool), None)
                if c is None:
                    continue
                xs.append(i + (j - (len(tools) - 1) / 2) * width)
                ys.append(c["ratio"])
                lo.append(c["ratio"] - c["ratio_min"])
                hi.append(c["ratio_max"] - c["ratio"])
            ax.bar(xs, [min(y, YMAX) for y in ys], width, yerr=[[0 if y > YMAX else v for y, v in zip(ys, lo)],
                                                                [0 if y > YMAX else v for y, v in zip(ys, hi)]],
                   capsize=3, label=tool)
            for x, y in zip(xs, ys):
                if y > YMAX:  # off the scale (NNCF's output on ONNX Runtime): its value written at the top
                    ax.text(x, YMAX * 0.97, f"{y:.1f}", ha="center", va="top", rotation=90, fontsize=7)
        ax.axhline(results["goals"][rt], color="red", lw=0.9, ls="--", label=f"goal {results['goals'][rt]:.2f}")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_ylim(0, YMAX)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([f"{s}\n{a}" for s, a in models], fontsize=7)
        ax.set_title(f"{rt}, batch 1, {results['threads']} thread")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"INT8 / FP32 latency (median of {results['runs']} runs, min-max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
