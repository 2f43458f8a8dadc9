"""The end-to-end job: train a supernet, profile the CPU, search, compile the knee point, verify, package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bitnas import ui
from bitnas.config import DemoConfig
from bitnas.errors import UserError
from bitnas.io import atomic_write_bytes, atomic_write_json
from bitnas.pipeline import PassContext, Sequential
from bitnas.problem import DemoProblem

OBJECTIVES_DOC = "accuracy (val split, simulated quantization) max; latency_ms (LUT) min; size_bytes min"
TARGET = "ort-cpu"


def build_lut(cfg: DemoConfig, supernet, out: Path, reduce_range: bool):
    """Reuse ``out/lut.json`` when it was measured here with the same settings, else profile the CPU."""
    from bitnas.backends import get_backend
    from bitnas.errors import LutError
    from bitnas.latency_luts import LatencyTable
    from bitnas.latency_luts.profiler import profile

    backend = get_backend("ort", threads=cfg.lut.threads)
    path = out / "lut.json"
    wanted = {"warmup": cfg.lut.warmup, "repeats": cfg.lut.repeats, "rounds": cfg.lut.rounds,
              "statistic": cfg.lut.statistic, "reduce_range": reduce_range}
    specs = supernet.all_layer_specs()
    bits = list(supernet.d.bit_options)
    if path.exists():
        try:
            lut = LatencyTable.load(path)
            lut.check_device(backend.fingerprint())
            same = all(lut.measurement.get(k) == v for k, v in wanted.items()) and lut.space == supernet.space.name
            if same and all(s.with_bits(b).key in lut.entries for s in specs for b in bits):
                ui.console.print(f"LUT: reusing {path} ({len(lut.entries)} entries measured on this device)")
                return lut, path
        except LutError as exc:
            ui.console.print(f"LUT: not reusing {path}: {exc}")
    n = len(specs) * len(bits)
    with ui.progress_bar("profile LUT (ONNX Runtime)", n) as update:
        def progress(phase: str, done: int, total: int) -> None:
            update(done, phase, total)

        lut = profile(backend, specs, bits, TARGET, reduce_range, cfg.lut.warmup, cfg.lut.repeats,
                      cfg.lut.rounds, cfg.lut.statistic, supernet.space.name, progress)
    lut.source = str(path)
    lut.save(path)
    ui.console.print(f"LUT: {len(lut.entries)} entries -> {path} (per-call overhead "
                     f"{lut.overhead['median_ms'] * 1e3:.1f} us, statistic {lut.statistic})")
    return lut, path


def plot_front(evals, front_ids: set[str], path: Path,
               title: str = "bitnas demo: joint architecture + bitwidth search") -> None:
    """Accuracy against predicted latency, coloured by size, the front highlighted; written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = np.array([e.objectives["latency_ms"] for e in evals])
    acc = np.array([e.objectives["accuracy"] for e in evals]) * 100
    size = np.array([e.objectives["size_bytes"] for e in evals]) / 1024
    on = np.array([e.candidate.id in front_ids for e in evals])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sc = ax.scatter(lat[~on], acc[~on], c=size[~on], cmap="viridis", s=14, alpha=0.5, label="evaluated")
    ax.scatter(lat[on], acc[on], c=size[on], cmap="viridis", s=60, edgecolors="red", linewidths=1.2,
               label="Pareto front")
    fig.colorbar(sc, ax=ax, label="size (KiB)")
    ax.set_xlabel("predicted latency (ms, LUT)")
    ax.set_ylabel("top-1 accuracy, simulated quantization (%)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run_demo(cfg: DemoConfig, out: str | Path) -> dict[str, Any]:
    import torch

    from bitnas.fingerprint import device_fingerprint
    from bitnas.passes import (
        AssignBitwidths,
        ExportOnnx,
        ExtractSubnet,
        IncStaticPtq,
        Package,
        RecalibrateBn,
        Verify,
    )
    from bitnas.passes.inc_ptq import resolve_reduce_range
    from bitnas.searchers import SEARCHERS, Study, knee_point, non_dominated, run_search
    from bitnas.supernets import build_supernet
    from bitnas.supernets.data import load_dataset
    from bitnas.supernets.evaluate import accuracy, calibration_batches, prepare_subnet
    from bitnas.supernets.train import train_supernet

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    # 1. data
    data = load_dataset(cfg.data.name, cfg.data.path, cfg.data.image_size, cfg.data.val_fraction)
    ui.console.print(f"data: {data.name}, train {len(data.y_train)}, val {len(data.y_val)}, "
                     f"{data.in_channels}x{data.image_size}x{data.image_size}, {data.num_classes} classes")

    # 2. supernet
    supernet = build_supernet(cfg.supernet.space, in_channels=data.in_channels, image_size=data.image_size,
                              num_classes=data.num_classes)
    space = supernet.space
    card = space.cardinality()
    ui.console.print(f"space: {space.name}, {card['joint_cardinality']:.3e} candidates "
                     f"({card['arch_cardinality']:.3e} architectures)")
    sn = cfg.supernet
    with ui.progress_bar("train supernet (sandwich rule)", sn.epochs) as update:
        trained = train_supernet(
            supernet, data, sn.epochs, sn.batch_size, sn.lr, sn.n_random, sn.distill, cfg.seed,
            checkpoint=out / "supernet.pt",
            progress=lambda e, n, h: update(e, f"loss {h['loss']:.3f} largest {h['acc_largest']:.3f} "
                                               f"smallest {h['acc_smallest']:.3f}"),
        )
    atomic_write_json(out / "train.json", trained)
    atomic_write_json(out / "run.json", {"config": cfg.model_dump(mode="json"), "target": TARGET})

    # 3. LUT
    reduce_range = resolve_reduce_range("auto")
    lut, lut_path = build_lut(cfg, supernet, out, reduce_range)

    # 4. search
    calib = calibration_batches(data, cfg.search.calib_batches, 64, cfg.seed)
    problem = DemoProblem.create(supernet, data, lut, lut_path, calib, reduce_range, trained["fingerprint"],
                                 cfg.search.calib_batches)
    study_path = out / "study.sqlite"
    try:
        study = Study(study_path, problem.problem)
    except UserError:
        stale = study_path.with_name(f"study.{problem.problem['hash']}.old.sqlite")
        study_path.rename(stale)
        ui.console.print(f"search: the previous study belongs to another problem; kept as {stale}")
        study = Study(study_path, problem.problem)
    if len(study):
        ui.console.print(f"search: resuming study {study_path} with {len(study)} evaluations")
    searcher = SEARCHERS[cfg.search.algorithm](space, problem.objectives, seed=cfg.seed, pop_size=cfg.search.pop_size)
    best = {"acc": 0.0}
    with ui.progress_bar(f"search ({cfg.search.algorithm})", cfg.search.budget) as update:
        def progress(n: int, total: int, obj: dict[str, float]) -> None:
            best["acc"] = max(best["acc"], obj["accuracy"])
            update(n, f"best acc {best['acc']:.3f}")

        evals = run_search(searcher, problem.evaluate, cfg.search.budget, study, progress)
    F = np.array([[-e.objectives["accuracy"], e.objectives["latency_ms"], e.objectives["size_bytes"]] for e in evals])
    mask = non_dominated(F)
    front = [e for e, m in zip(evals, mask) if m]
    front.sort(key=lambda e: e.objectives["latency_ms"])
    front_ids = {e.candidate.id for e in front}
    study.export_json(out / "search.json", problem.objectives, front_ids)
    study.close()
    knee = front[knee_point(np.array([[-e.objectives["accuracy"], e.objectives["latency_ms"],
                                       e.objectives["size_bytes"]] for e in front]))]
    rows = []
    for e in front:
        c = e.candidate
        n8 = sum(1 for s in supernet.layers(c) if s.bits == (8, 8))
        rows.append([("* " if e is knee else "  ") + c.id, e.objectives["accuracy"] * 100,
                     e.objectives["latency_ms"], e.objectives["size_bytes"] / 1024,
                     f"{n8}/{len(supernet.layers(c))}"])
    ui.show(ui.table(f"Pareto front ({len(front)} of {len(evals)} evaluated; * = knee, compiled)",
                     ["id", "acc %", "pred. latency ms", "size KiB", "INT8 layers"], rows))
    plot_front(evals, front_ids, out / "front.png")

    # 5. compile the knee point
    cand = knee.candidate
    float_acc = accuracy(prepare_subnet(supernet, cand, calib), data)
    target_fp = device_fingerprint(cfg.compile.threads)
    ctx = PassContext(
        workdir=out / "work", target=TARGET, seed=cfg.seed,
        inputs={"supernet": supernet, "data": data},
        results={
            "target": {"name": TARGET, "fingerprint": target_fp},
            "lut": {"path": str(lut_path), "fingerprint": lut.fingerprint, "statistic": lut.statistic},
            "predicted": {"latency_ms": knee.objectives["latency_ms"], "size_bytes": knee.objectives["size_bytes"],
                          "accuracy": knee.objectives["accuracy"], "accuracy_float_subnet": float_acc},
        },
    )
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    pipeline = Sequential([
        ExtractSubnet(),
        RecalibrateBn(batches=cfg.search.calib_batches),
        ExportOnnx(),
        AssignBitwidths(),
        IncStaticPtq(calibration_batches=cfg.search.calib_batches),
        Verify(backends=cfg.compile.backends, threads=cfg.compile.threads, repeats=cfg.compile.latency_repeats),
        Package(out=str((out / "artifact").resolve())),
    ])
    with ui.progress_bar("compile knee point", len(pipeline.passes)) as update:
        done = {"n": 0}

        def on_pass(name: str, phase: str) -> None:
            if phase == "end":
                done["n"] += 1
            update(done["n"], name)

        ctx.on_pass = on_pass
        artifact = pipeline.run(cand, ctx)
    m = artifact.manifest["measured"]
    ui.show(ui.table("compile passes", ["pass", "seconds"], [[t.name, t.seconds] for t in ctx.timings]))
    brows = []
    for b in cfg.compile.backends:
        e = m[b]
        brows.append([b, e["accuracy"] * 100, e["accuracy_fp32"] * 100, e["latency_ms"], e["latency_ms_fp32"],
                      e["latency_ratio_to_fp32"], e.get("top1_agreement_vs_fakequant", float("nan")) * 100])
    ui.show(ui.table(f"artifact {cand.id}: measured (latency: {m[cfg.compile.backends[0]]['statistic']} of "
                     f"{cfg.compile.latency_repeats} runs, batch 1, {cfg.compile.threads} thread)",
                     ["backend", "acc %", "acc fp32 %", "lat ms", "lat fp32 ms", "ratio", "agree fakeq %"], brows))
    summary = {
        "out": str(out), "artifact": str(artifact.root), "candidate": cand.id,
        "predicted": artifact.manifest["predicted"], "measured": m,
        "front_size": len(front), "evaluations": len(evals),
    }
    ui.console.print(f"artifact: {artifact.root}/model.onnx  manifest: {artifact.root}/manifest.json")
    return summary
