"""``bitnas compile``: candidates of a finished study through a configurable, cached pass pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from bitnas import ui
from bitnas.artifact import Artifact
from bitnas.config import DemoConfig, StrictModel, load_config, validate_config
from bitnas.errors import ConfigError, UserError
from bitnas.pipeline import PASSES, Pass, PassContext, Sequential

DEFAULT_PASSES: tuple[Any, ...] = (
    "ExtractSubnet", "RecalibrateBn", "Qaft", "ExportOnnx", "AssignBitwidths", "IncStaticPtq", "SubByteWeights",
    "Verify", "Package",
)


class CompileConfig(StrictModel):
    """A compile: which candidates, for which target, through which passes (each with its config)."""

    pick: str = Field("knee", description="knee, all-front, or a candidate id from the study")
    target: Literal["ort-cpu"] = Field("ort-cpu", description="target the LUT and measurements belong to")
    passes: tuple[str | dict[str, dict[str, Any] | None], ...] = Field(
        DEFAULT_PASSES, description="pass names, or one-key maps {PassName: {config}}, in order")


def build_pipeline(cfg: CompileConfig, source: str = "<compile config>") -> Sequential:
    """Instantiate the configured passes; an unknown pass or key is one error naming it."""
    import bitnas.passes  # noqa: F401  (registers the passes)

    passes: list[Pass] = []
    for i, item in enumerate(cfg.passes):
        if isinstance(item, str):
            name, conf = item, {}
        elif len(item) == 1:
            name, conf = next(iter(item.items()))
        else:
            raise ConfigError(f"{source}: passes[{i}] must be a pass name or a map with exactly one pass name")
        if name not in PASSES:
            raise ConfigError(f"{source}: passes[{i}]: unknown pass '{name}' (known: {', '.join(sorted(PASSES))})")
        cls = PASSES[name]
        passes.append(cls(validate_config(cls.Config, conf or {}, f"{source}: passes[{i}] {name}")))
    return Sequential(passes)


def load_compile_config(path: str | Path | None, **overrides: Any) -> tuple[CompileConfig, str]:
    cfg = load_config(CompileConfig, path) if path else CompileConfig()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        cfg = cfg.model_copy(update=overrides)
    return cfg, str(path or "<default compile config>")


class StudyRun:
    """What a finished ``bitnas demo`` folder holds, loaded for compiling: config, data, supernet, front."""

    def __init__(self, folder: str | Path):
        import torch

        from bitnas.supernets import build_supernet
        from bitnas.supernets.data import load_dataset

        self.folder = Path(folder)
        run = self._json("run.json")
        self.config = validate_config(DemoConfig, run.get("config"), str(self.folder / "run.json"))
        c = self.config
        self.data = load_dataset(c.data.name, c.data.path, c.data.image_size, c.data.val_fraction)
        self.supernet = build_supernet(c.supernet.space, in_channels=self.data.in_channels,
                                       image_size=self.data.image_size, num_classes=self.data.num_classes)
        ckpt = self.folder / "supernet.pt"
        if not ckpt.is_file():
            raise UserError(f"{ckpt}: supernet checkpoint missing")
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            self.supernet.load_state_dict(state["model"])
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{ckpt}: not a checkpoint of this supernet ({exc})") from None
        self.supernet.eval()
        self.supernet_fingerprint = state.get("fingerprint")
        self.search = self._json("search.json")

    def _json(self, name: str) -> dict[str, Any]:
        path = self.folder / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: missing; is {self.folder} the output folder of 'bitnas demo'?") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None

    def pick(self, how: str) -> list[dict[str, Any]]:
        """Evaluation records of the knee, the whole front, or one candidate id."""
        import numpy as np

        from bitnas.searchers import knee_point

        evals = self.search.get("evaluations", [])
        front = [e for e in evals if e.get("on_front")]
        if how == "all-front":
            return front
        if how == "knee":
            if not front:
                raise UserError(f"{self.folder / 'search.json'}: the study has no Pareto front")
            F = np.array([[-e["objectives"]["accuracy"], e["objectives"]["latency_ms"], e["objectives"]["size_bytes"]]
                          for e in front])
            return [front[knee_point(F)]]
        match = [e for e in evals if e["id"] == how]
        if not match:
            raise UserError(f"{self.folder / 'search.json'}: no candidate with id '{how}'")
        return match


def compile_study(study: str | Path, out: str | Path, cfg: CompileConfig, source: str = "<compile config>",
                  use_cache: bool = True, candidate_file: str | Path | None = None) -> list[Artifact]:
    """Compile the picked candidates of ``study`` into artifacts under ``out`` (one folder per candidate)."""
    from bitnas.cache import array_digest
    from bitnas.fingerprint import device_fingerprint
    from bitnas.space import Candidate

    pipeline = build_pipeline(cfg, source)
    run = StudyRun(study)
    out = Path(out)
    if candidate_file is not None:
        try:
            record = json.loads(Path(candidate_file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{candidate_file}: cannot read a candidate ({exc})") from None
        records = [{"id": None, **record.get("candidate", record), "objectives": record.get("predicted", {})}]
    else:
        records = run.pick(cfg.pick)
    from bitnas.cache import PassCache

    cache = PassCache(Path(study) / "cache" / "passes") if use_cache else None
    env = {"supernet": run.supernet_fingerprint, "data": array_digest(run.data.x_train, run.data.x_val)}
    artifacts = []
    for rec in records:
        cand = run.supernet.space.validate(Candidate.from_dict(rec))
        folder = out if len(records) == 1 else out / cand.id
        ctx = PassContext(workdir=folder / "work", target=cfg.target, seed=run.config.seed, cache=cache, env=env,
                          inputs={"supernet": run.supernet, "data": run.data})
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        obj = rec.get("objectives", {})
        ctx.results.update({
            "target": {"name": cfg.target, "fingerprint": device_fingerprint(1)},
            "lut": {"path": str(Path(study) / "lut.json")},
            "predicted": {k: obj[k] for k in ("latency_ms", "size_bytes", "accuracy") if k in obj},
        })
        with ui.progress_bar(f"compile {cand.id}", len(pipeline.passes)) as update:
            done = {"n": 0}

            def on_pass(name: str, phase: str, update=update, done=done) -> None:
                if phase in ("end", "cached"):
                    done["n"] += 1
                update(done["n"], name + (" (cached)" if phase == "cached" else ""))

            ctx.on_pass = on_pass
            artifact = pipeline.run(cand, ctx)
        ui.show(ui.table(f"passes for {cand.id}", ["pass", "seconds", "cached"],
                         [[t.name, t.seconds, "yes" if t.cached else ""] for t in ctx.timings]))
        artifacts.append(artifact)
    return artifacts
