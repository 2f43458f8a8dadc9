"""``bitnas search --config C.yaml``: run any searcher on the demo problem for a budget of true evaluations.

The demo problem: a supernet trained on the embedded digits (from a checkpoint, or trained here and
checkpointed), objectives accuracy with simulated quantization (max), LUT latency (min) and size (min).
Every evaluated candidate goes to the study (SQLite) as it finishes, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from bitnas import ui
from bitnas.config import DataConfig, LutConfig, StrictModel, SupernetConfig
from bitnas.errors import ConfigError, UserError
from bitnas.problem import DemoProblem, hv_reference, normalized_hv


class SearchRunConfig(StrictModel):
    seed: int = Field(0, description="seed passed to the supernet training, the searcher and the data order")
    searcher: str = Field("nsga2", description="search strategy (bitnas.searchers.SEARCHERS)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options of the searcher")
    budget: int = Field(60, ge=1, description="true evaluations (distinct candidates)")
    constraints: dict[str, float] = Field(default_factory=dict,
                                          description="largest allowed latency_ms and/or size_bytes")
    data: DataConfig = DataConfig()
    supernet: SupernetConfig = SupernetConfig()
    checkpoint: str | None = Field(None, description="trained supernet checkpoint; trained here when absent")
    lut: LutConfig = LutConfig()
    lut_path: str | None = Field(None, description="latency table file; profiled here when absent")
    calib_batches: int = Field(4, ge=1, description="train batches (of 64) for BN recalibration and ranges")
    study: str | None = Field(None, description="study database (default OUT/study.sqlite)")

    @field_validator("searcher")
    @classmethod
    def _known(cls, v: str) -> str:
        from bitnas.searchers import SEARCHERS

        if v not in SEARCHERS:
            raise ValueError(f"unknown searcher '{v}' (known: {', '.join(SEARCHERS)})")
        return v

    @field_validator("constraints")
    @classmethod
    def _cheap_only(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in ("latency_ms", "size_bytes")]
        if bad:
            raise ValueError(f"constraints apply to latency_ms or size_bytes, not {bad}")
        return v


def build_problem(cfg: SearchRunConfig, out: Path) -> DemoProblem:
    """The demo problem of ``cfg``: data, supernet (checkpoint or trained), LUT (file or profiled)."""
    import torch

    from bitnas.config import DemoConfig
    from bitnas.demo import build_lut
    from bitnas.io import sha256_file
    from bitnas.latency_luts import LatencyTable
    from bitnas.passes.inc_ptq import resolve_reduce_range
    from bitnas.supernets import build_supernet
    from bitnas.supernets.data import load_dataset
    from bitnas.supernets.evaluate import calibration_batches
    from bitnas.supernets.train import train_supernet

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.data.name, cfg.data.path, cfg.data.image_size, cfg.data.val_fraction)
    supernet = build_supernet(cfg.supernet.space, in_channels=data.in_channels, image_size=data.image_size,
                              num_classes=data.num_classes)
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            supernet.load_state_dict(state["model"])
        except FileNotFoundError:
            raise ConfigError(f"checkpoint: {path} not found") from None
        except Exception as exc:  # noqa: BLE001 - any unreadable or mismatched file is the user's input
            raise UserError(f"{path}: not a supernet checkpoint of space '{cfg.supernet.space}' ({exc})") from None
        supernet.eval()
        fingerprint = str(state.get("fingerprint", sha256_file(path)[:16]))
    else:
        sn = cfg.supernet
        with ui.progress_bar("train supernet (sandwich rule)", sn.epochs) as update:
            trained = train_supernet(supernet, data, sn.epochs, sn.batch_size, sn.lr, sn.n_random, sn.distill,
                                     cfg.seed, checkpoint=out / "supernet.pt",
                                     progress=lambda e, n, h: update(e, f"loss {h['loss']:.3f}"))
        fingerprint = trained["fingerprint"]
    reduce_range = resolve_reduce_range("auto")
    if cfg.lut_path:
        lut_path = Path(cfg.lut_path)
        if not lut_path.is_file():
            raise ConfigError(f"lut_path: {lut_path} not found")
        lut = LatencyTable.load(lut_path)
    else:
        lut, lut_path = build_lut(DemoConfig(seed=cfg.seed, lut=cfg.lut), supernet, out, reduce_range)
    calib = calibration_batches(data, cfg.calib_batches, 64, cfg.seed)
    return DemoProblem.create(supernet, data, lut, lut_path, calib, reduce_range, fingerprint, cfg.calib_batches)


def make_searcher(name: str, problem: DemoProblem, seed: int, options: dict[str, Any],
                  constraints: dict[str, float] | None = None, source: str = "<config>"):
    """Build searcher ``name`` for ``problem``; a bad option is a ``ConfigError`` naming it."""
    from bitnas.searchers import NEEDS_SUPERNET, SEARCHERS

    if name not in SEARCHERS:
        raise ConfigError(f"{source}: key 'searcher': unknown searcher '{name}' (known: {', '.join(SEARCHERS)})")
    kwargs = dict(options)
    if name in NEEDS_SUPERNET:
        kwargs.update(supernet=problem.supernet, data=problem.data, lut=problem.lut,
                      reduce_range=problem.reduce_range)
    try:
        return SEARCHERS[name](problem.supernet.space, problem.objectives, seed=seed,
                               constraints=constraints or None, cheap=problem.cheap, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"{source}: key 'options': searcher '{name}' does not take these options ({exc})") from None


def run_search_command(cfg: SearchRunConfig, out: str | Path, source: str = "<config>") -> dict[str, Any]:
    """Run the configured search; returns a summary (front, hypervolume, paths)."""
    from bitnas.searchers import Study, non_dominated, run_search

    out = Path(out)
    problem = build_problem(cfg, out)
    searcher = make_searcher(cfg.searcher, problem, cfg.seed, cfg.options, cfg.constraints, source)
    study_path = Path(cfg.study) if cfg.study else out / "study.sqlite"
    study = Study(study_path, problem.problem)
    if len(study):
        ui.console.print(f"search: resuming study {study_path} with {len(study)} evaluations")
    ideal, ref = hv_reference(problem)
    state: dict[str, Any] = {"F": [
        [-e.objectives["accuracy"], e.objectives["latency_ms"], e.objectives["size_bytes"]]
        for e in study.evaluations()]}
    history: list[dict[str, float]] = []
    with ui.progress_bar(f"search ({cfg.searcher})", cfg.budget) as update:
        def progress(n: int, total: int, obj: dict[str, float]) -> None:
            state["F"].append([-obj["accuracy"], obj["latency_ms"], obj["size_bytes"]])
            F = np.array(state["F"])
            front = int(non_dominated(F).sum())
            hv = normalized_hv(F, ideal, ref)
            history.append({"evaluations": n, "front_size": front, "hypervolume": hv})
            update(n, f"front {front} hv {hv:.4f}")

        evals = run_search(searcher, problem.evaluate, cfg.budget, study, progress)
    F = np.array([[-e.objectives["accuracy"], e.objectives["latency_ms"], e.objectives["size_bytes"]]
                  for e in evals]).reshape(len(evals), 3)
    mask = non_dominated(F) if len(F) else np.zeros(0, bool)
    front = sorted((e for e, m in zip(evals, mask) if m), key=lambda e: e.objectives["latency_ms"])
    front_ids = {e.candidate.id for e in front}
    study.export_json(out / "search.json", problem.objectives, front_ids)
    study.close()
    ui.show(ui.table(f"Pareto front ({len(front)} of {len(evals)} evaluated, {cfg.searcher})",
                     ["id", "acc %", "pred. latency ms", "size KiB"],
                     [[e.candidate.id, e.objectives["accuracy"] * 100, e.objectives["latency_ms"],
                       e.objectives["size_bytes"] / 1024] for e in front]))
    from bitnas.demo import plot_front

    plot_front(evals, front_ids, out / "front.png", f"bitnas search: {cfg.searcher}, {len(evals)} evaluations")
    violations = [e.candidate.id for e in evals
                  if any(e.objectives[k] > v for k, v in cfg.constraints.items())]
    summary = {"searcher": cfg.searcher, "evaluations": len(evals), "front_size": len(front),
               "hypervolume": normalized_hv(F, ideal, ref), "study": str(study_path),
               "search_json": str(out / "search.json"), "plot": str(out / "front.png"),
               "constraint_violations": violations,
               "front": [{"id": e.candidate.id, **e.objectives} for e in front]}
    ui.console.print(f"search: {len(evals)} evaluations, front {len(front)}, hypervolume "
                     f"{summary['hypervolume']:.4f}; plot {out / 'front.png'}")
    return summary


def _cmd_search(args: argparse.Namespace) -> int:
    from bitnas.config import load_config

    cfg = load_config(SearchRunConfig, args.config)
    summary = run_search_command(cfg, args.out, str(args.config))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def register(sub) -> None:
    p = sub.add_parser("search", help="run a searcher on the demo problem for a budget of true evaluations")
    p.add_argument("--config", required=True, help="YAML config (keys: see SearchRunConfig); unknown keys are errors")
    p.add_argument("--out", default="runs/search", help="output folder (default runs/search)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(fn=_cmd_search)
