"""The project every command shares: one typed config, one run folder, the pieces built once.

``project.yaml`` names the family and space (built-in or a plug-in ``module:attr``), the data, the target,
the objectives and constraints, the searcher and budget, and the compile pipeline. ``Project`` checks all
of it before any expensive step (an unknown target, searcher, objective, pass or space is one error
naming the key), then builds the data, the supernet (a checkpoint, or trained and checkpointed), the LUT
(a file, or profiled), the search problem and the compile context on demand. Every command reads and
writes the same ``RunFolder``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, field_validator, model_validator

from bitnas import ui
from bitnas.config import StrictModel, load_config, validate_config
from bitnas.errors import ConfigError, LutError, UserError
from bitnas.io import atomic_write_bytes, atomic_write_json

PROJECT_FILE = "project.yaml"

DEFAULT_PASSES: tuple[Any, ...] = (
    "ExtractSubnet", "RecalibrateBn", "Qaft", "ExportOnnx", "AssignBitwidths", "IncStaticPtq", "SubByteWeights",
    "SubByteActivations", "Compact", "Verify", "Package",
)


class FamilySection(StrictModel):
    name: str | None = Field(None, description="family (bitnas space list), a plug-in 'package.module:attr', or "
                                               "empty for the built-in family that has 'space'")
    space: str = Field("mbv2-tiny", description="the family's named search space")


class DataSection(StrictModel):
    name: str = Field("digits", description="data set: digits (embedded), cifar10, npz, image-folder, or a "
                                            "plug-in 'package.module:attr' returning a bitnas.api.TaskData")
    path: str | None = Field(None, description="folder (cifar10, image-folder) or file (npz); unused for digits; "
                                               "relative to the project file")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share held out for validation: of the digits "
                                                                 "set, of each class of an image folder "
                                                                 "without train/ and val/ folders")
    image_size: int = Field(32, ge=8, le=1024, description="side of the square images fed to the network")
    channels: int | None = Field(None, ge=1, le=4, description="channels fed to the network: a grayscale set is "
                                                              "repeated to 3 for an RGB supernet (once-for-all); "
                                                              "an image folder is read as RGB (3) or grayscale "
                                                              "(1); default: the data's own")
    mean: list[float] | None = Field(None, min_length=1, description="image-folder: per-channel mean to normalize "
                                                                     "with, in [0, 1] units (ImageNet's: 0.485, "
                                                                     "0.456, 0.406); default: estimated from up "
                                                                     "to 256 train images")
    std: list[float] | None = Field(None, min_length=1, description="image-folder: per-channel std, with `mean` "
                                                                    "(ImageNet's: 0.229, 0.224, 0.225)")

    @model_validator(mode="after")
    def _stats(self) -> DataSection:
        if (self.mean is None) != (self.std is None):
            raise ValueError("'mean' and 'std' go together: give both or neither")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise ValueError(f"'mean' has {len(self.mean)} values but 'std' {len(self.std)}")
        if self.std is not None and not all(v > 0 for v in self.std):
            raise ValueError(f"'std' {self.std}: every value must be > 0")
        return self


class TrainSection(StrictModel):
    checkpoint: str | None = Field(None, description="a trained supernet (weights-only .pt) to use instead of "
                                                     "training; relative to the project file")
    init: str | None = Field(None, description="weights to start training from: a once-for-all checkpoint "
                                               "(families ofa-mbv3, ofa-proxyless, ofa-resnet) or a bitnas checkpoint; `epochs` then "
                                               "fine-tune them (0: use them as they are); relative to the project")
    epochs: int = Field(12, ge=0, description="supernet training epochs (0 only with `init`, `checkpoint` or an "
                                               "adapter's trained supernet)")
    batch_size: int = Field(64, ge=1, description="training batch size")
    lr: float | None = Field(None, gt=0.0, description="peak learning rate (cosine schedule); default: the "
                                                       "family's (0.05 SGD, 0.004 AdamW)")
    n_random: int = Field(2, ge=0, description="random subnets per step besides the largest and smallest")
    distill: bool = Field(True, description="in-place distillation from the largest subnet")
    optimizer: Literal["sgd", "adamw"] | None = Field(None, description="default: the family's")
    float_epochs: int = Field(0, ge=0, description="low-bit (QFA) spaces: float epochs before the bit stages")
    stage1_epochs: int | None = Field(None, ge=0, description="low-bit spaces: epochs of low bits + float")


class LutSection(StrictModel):
    path: str | None = Field(None, description="a LUT file to use instead of profiling (checked against this "
                                               "device, target and space); relative to the project file")
    threads: int = Field(1, ge=1, description="intra-op threads the runtime uses while measuring")
    warmup: int = Field(10, ge=0, description="runs discarded before timing each layer")
    repeats: int = Field(60, ge=5, description="timed runs per layer")
    rounds: int = Field(3, ge=1, description="interleaved passes over all layers the repeats are split into")
    statistic: Literal["median", "p10", "mean"] = Field("median", description="statistic used to predict")
    blocks: bool = Field(False, description="also measure fusion units (the family's blocks: inverted-residual, "
                                            "bottleneck, SE) whole: slower to profile, closer end to end")
    force: bool = Field(False, description="use a LUT measured on another device")


class QaftSettings(StrictModel):
    epochs: int = Field(1, ge=1, description="fine-tuning epochs over the training split per candidate (BOMP-NAS: 1)")
    lr: float = Field(1e-3, gt=0.0, description="peak SGD learning rate (cosine decay)")


class ExecutorSection(StrictModel):
    kind: Literal["inprocess", "pool", "ray"] = Field("inprocess", description="where true evaluations run: in "
                                                      "this process, a local process pool, or Ray")
    workers: int = Field(2, ge=1, description="pool processes or Ray actors evaluating at once (inprocess: 1)")
    address: str | None = Field(None, description="ray: address of a running cluster to join (e.g. "
                                                  "'10.0.0.5:6379'); default: a local Ray on 127.0.0.1")

    @model_validator(mode="after")
    def _ray_address(self) -> ExecutorSection:
        if self.address is not None and self.kind != "ray":
            raise ValueError(f"'address' applies to kind ray, not '{self.kind}'")
        return self


class SearchSection(StrictModel):
    searcher: str = Field("nsga2", description="random, nsga2, evolution, linas, bo, edmips, qfa, or a plug-in")
    budget: int = Field(120, ge=1, description="true evaluations (distinct candidates)")
    pop_size: int = Field(20, ge=2, description="population size")
    options: dict[str, Any] = Field(default_factory=dict, description="further keyword options of the searcher")
    objectives: tuple[str, ...] = Field(("accuracy", "latency_ms", "size_bytes"), min_length=1,
                                        description="accuracy, latency_ms, energy_mj, size_bytes, bitops, or plug-ins")
    constraints: dict[str, float] = Field(default_factory=dict, description="largest allowed value of a cheap "
                                                                            "objective, e.g. {latency_ms: 0.05}")
    calib_batches: int = Field(4, ge=1, description="train batches (of 64) that recalibrate BN and calibrate "
                                                    "activation ranges, in the search and in static PTQ alike")
    accuracy_reference: float = Field(0.5, ge=0.0, lt=1.0, description="accuracy at the hypervolume reference point")
    executor: ExecutorSection = Field(ExecutorSection(), description="where true evaluations run: "
                                                                     "{kind: inprocess|pool|ray, workers, address}")
    evaluation: Literal["simulated", "inc-ptq", "qaft"] = Field(
        "simulated", description="how a true evaluation measures accuracy: simulated (fake quantization of the "
                                 "subnet), inc-ptq (Intel Neural Compressor static PTQ of its ONNX export, run on "
                                 "ONNX Runtime: SimQ-NAS), qaft (quantization-aware fine-tuning at its bits, then "
                                 "simulated: BOMP-NAS)")
    qaft: QaftSettings | None = Field(None, description="evaluation qaft: fine-tuning per candidate (default: 1 "
                                                        "epoch, lr 0.001)")

    @model_validator(mode="after")
    def _qaft_settings(self) -> SearchSection:
        if self.qaft is not None and self.evaluation != "qaft":
            raise ValueError(f"'qaft' settings apply to evaluation qaft, not '{self.evaluation}'")
        return self


class CompileSection(StrictModel):
    pick: str = Field("knee", description="knee, all-front, or a candidate id")
    passes: tuple[str | dict[str, dict[str, Any] | None], ...] = Field(
        DEFAULT_PASSES, description="pass names, or one-key maps {PassName: {config}}, in order")


class ProjectConfig(StrictModel):
    """A whole bitnas project: what to compile, from what, for which target, how."""

    seed: int = Field(0, ge=0, description="seed passed to every random step")
    family: FamilySection = Field(FamilySection(), description="which supernet: family and space")
    data: DataSection = Field(DataSection(), description="the task's data and its preprocessing")
    train: TrainSection = Field(TrainSection(), description="a trained checkpoint, or how to train the supernet")
    target: str = Field("ort-cpu", description="deployment target (bitnas targets)")
    lut: LutSection = Field(LutSection(), description="the target's latency table: a file, or how to profile it")
    search: SearchSection = Field(SearchSection(), description="searcher, budget, objectives and constraints")
    compile: CompileSection = Field(CompileSection(), description="which candidates, through which passes")

    @field_validator("target")
    @classmethod
    def _known_target(cls, v: str) -> str:
        from bitnas.api import TARGETS

        if v not in TARGETS and ":" not in v:
            raise ValueError(f"unknown target '{v}' (known: {', '.join(TARGETS.names())})")
        return v


def config_yaml(cfg: ProjectConfig) -> str:
    """The config as YAML, every key spelled out."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


@dataclass(frozen=True)
class RunFolder:
    """The one folder layout every command reads and writes."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / PROJECT_FILE

    @property
    def supernet(self) -> Path:
        return self.root / "supernet.pt"

    @property
    def train_json(self) -> Path:
        return self.root / "train.json"

    @property
    def lut(self) -> Path:
        return self.root / "lut.json"

    @property
    def study(self) -> Path:
        return self.root / "study.sqlite"

    @property
    def search_json(self) -> Path:
        return self.root / "search.json"

    @property
    def front_png(self) -> Path:
        return self.root / "front.png"

    @property
    def front_bits_png(self) -> Path:
        return self.root / "front_bits.png"

    @property
    def lut_validate(self) -> Path:
        return self.root / "lut_validate.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def cache(self) -> Path:
        return self.root / "cache" / "passes"

    @property
    def work(self) -> Path:
        return self.root / "work"


def space_bit_options(space) -> list[tuple[int, int]]:
    """Every (w_bits, a_bits) some policy gene of ``space`` offers."""
    return sorted({tuple(o) for g in space.policy_genes for o in g.options})


class Project:
    """A project config bound to its run folder; builds data, supernet, LUT and problem once each."""

    # a search worker's project: it reads the run folder its parent (holding the lock) trained and profiled
    # into, and neither takes the lock nor writes (a finished training checkpoint resumes without writing)
    read_only = False

    def __init__(self, cfg: ProjectConfig, root: str | Path, source: str = "<project>", base: Path | None = None):
        from bitnas.api import SEARCHERS, TARGETS, Target
        from bitnas.objectives import resolve
        from bitnas.supernets.families import check_family, family_of_space

        self.cfg = cfg
        self.run = RunFolder(Path(root))
        self.source = source
        self.base = base or Path.cwd()  # relative paths in the config are relative to this
        # every check that needs no data, training or measurement runs here, before any of them
        try:
            fam_name = cfg.family.name or family_of_space(cfg.family.space)
        except UserError as exc:
            raise ConfigError(f"{source}: key 'family.space': {exc}") from None
        self.family = check_family(self._unit("families", fam_name, "family.name"), f"{source}: family.name",
                                   fam_name)
        t = cfg.train
        if t.epochs == 0 and not t.init and not t.checkpoint and not getattr(self.family, "pretrained", False):
            raise ConfigError(f"{source}: key 'train.epochs': 0 trains nothing; give train.init (weights to use) "
                              "or train.checkpoint")
        if cfg.family.space not in self.family.spaces():
            raise ConfigError(f"{source}: key 'family.space': family '{self.family.name}' has no space "
                              f"'{cfg.family.space}' (it has: {', '.join(sorted(self.family.spaces()))})")
        self.target = TARGETS.get(cfg.target, f"{source}: target")
        if not isinstance(self.target, Target):
            raise ConfigError(f"{source}: key 'target': '{cfg.target}' is not a bitnas.api.Target")
        self.objectives = resolve(list(cfg.search.objectives), f"{source}: search.objectives")
        cheap = {o.name for o in self.objectives if o.cheap}
        from bitnas.api import OBJECTIVES

        for key in cfg.search.constraints:
            obj = OBJECTIVES.get(key, f"{source}: search.constraints")
            if not obj.cheap:
                raise ConfigError(f"{source}: key 'search.constraints.{key}': only cheap objectives (LUT, size, "
                                  f"bitops) can be constrained before evaluation")
            cheap.add(key)
        if not self.target.has_lut:
            for name in sorted(cheap):
                if OBJECTIVES.get(name).needs_lut:
                    raise ConfigError(f"{source}: '{name}' is an objective or constraint, but target "
                                      f"'{self.target.name}' is analytic and has no LUT (it offers accuracy, "
                                      "size_bytes, bitops)")
        if "energy_mj" in cheap and not self.target.energy:
            raise ConfigError(f"{source}: energy_mj is an objective or constraint, but target '{self.target.name}' "
                              "has no energy model (targets with energy: "
                              f"{', '.join(n for n, t in TARGETS.items() if t.energy)})")
        self.searcher_class = SEARCHERS.get(cfg.search.searcher, f"{source}: search.searcher")
        from bitnas.searchers.base import validate_options

        # typed against the searcher's own keyword arguments, before any work
        self.search_options = validate_options(self.searcher_class, cfg.search.options, source)
        self.pipeline = self.build_pipeline()
        self._data = None
        self._supernet = None
        self._supernet_fp: str | None = None
        self._lut = None

    # ------------------------------------------------------------------------------------------ loading
    @staticmethod
    def _unit(kind: str, name: str, where: str):
        import bitnas.api as api

        return getattr(api, kind.upper()).get(name, where)

    @classmethod
    def load(cls, path: str | Path, root: str | Path | None = None) -> Project:
        """The project of a ``project.yaml`` (or of a folder holding one); its run folder is that folder."""
        path = Path(path)
        if path.is_dir():
            path = path / PROJECT_FILE
        if not path.is_file():
            raise ConfigError(f"{path}: project file not found")
        cfg = load_config(ProjectConfig, path)
        return cls(cfg, root or path.parent, str(path), base=path.parent)

    @classmethod
    def default(cls, root: str | Path, cfg: ProjectConfig | None = None, source: str = "<default project>") -> Project:
        return cls(cfg or ProjectConfig(), root, source)

    def check_files(self) -> None:
        """Every file the config names exists: run before the first expensive step (training, profiling), so a
        missing LUT is not found after the supernet trained. (Loading the project needs none of them: a user
        may read its data to train the weights ``train.init`` will name.)"""
        cfg = self.cfg
        for key, value in (("train.checkpoint", cfg.train.checkpoint), ("train.init", cfg.train.init),
                           ("lut.path", cfg.lut.path)):
            if value and not self.resolve_path(value).is_file():
                raise ConfigError(f"{self.source}: key '{key}': {self.resolve_path(value)} not found")

    def writer(self) -> None:
        """Take the run folder's lock (one writing process per run folder; see ``bitnas.runlock``), once the
        files the config names are known to exist."""
        from bitnas.runlock import hold

        self.check_files()
        hold(self.run.root)

    def resolve_path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base / p

    def write_config(self) -> Path:
        """Write the project's config into the run folder (what later commands read)."""
        self.writer()
        self.run.root.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg
        upd: dict[str, Any] = {}
        # paths the config names are written absolute, so the run folder's copy means the same
        train = {k: str(self.resolve_path(v)) for k in ("checkpoint", "init") if (v := getattr(cfg.train, k))}
        if train:
            upd["train"] = cfg.train.model_copy(update=train)
        if cfg.lut.path:
            upd["lut"] = cfg.lut.model_copy(update={"path": str(self.resolve_path(cfg.lut.path))})
        if cfg.data.path:
            upd["data"] = cfg.data.model_copy(update={"path": str(self.resolve_path(cfg.data.path))})
        text = "# bitnas project (bitnas.project.ProjectConfig); every key is documented there\n"
        text += config_yaml(cfg.model_copy(update=upd))
        return atomic_write_bytes(self.run.config, text.encode())

    # ------------------------------------------------------------------------------------------ pieces
    def data(self):
        """The project's data set (built once)."""
        if self._data is None:
            from bitnas.api import DATASETS
            from bitnas.supernets.data import with_channels

            d = self.cfg.data
            loader = DATASETS.get(d.name, f"{self.source}: data.name")
            path = str(self.resolve_path(d.path)) if d.path else None
            data = loader(path=path, image_size=d.image_size, val_fraction=d.val_fraction, seed=self.cfg.seed,
                          **self._data_options(loader))
            missing = [m for m in ("name", "num_classes", "in_channels", "image_size", "batches", "count", "head",
                                   "digest") if not hasattr(data, m)]
            if missing:
                raise ConfigError(f"{self.source}: key 'data.name': '{d.name}' gave a {type(data).__name__}, "
                                  f"which lacks {', '.join(missing)} (bitnas.api.TaskData)")
            self._data = with_channels(data, d.channels, f"{self.source}: data.channels")
        return self._data

    def _data_options(self, loader) -> dict[str, Any]:
        """``data.channels``, ``mean`` and ``std`` for a loader that takes them (image-folder reads the files
        with that many channels; other sets are repeated to ``channels`` once loaded)."""
        import inspect

        d = self.cfg.data
        params = inspect.signature(loader).parameters
        takes = any(p.kind is p.VAR_KEYWORD for p in params.values())
        out = {}
        for key in ("channels", "mean", "std"):
            value = getattr(d, key)
            if value is None:
                continue
            if takes or key in params:
                out[key] = value
            elif key != "channels":
                raise ConfigError(f"{self.source}: key 'data.{key}': data set '{d.name}' takes no '{key}' (its "
                                  "statistics come from its train split)")
        return out

    def build_supernet(self):
        """The project's untrained supernet, shaped for its data."""
        from bitnas.supernets.families import build_supernet

        data = self.data()
        return build_supernet(self.cfg.family.space, self.family.name if ":" not in (self.cfg.family.name or "")
                              else self.cfg.family.name, in_channels=data.in_channels,
                              image_size=data.image_size, num_classes=data.num_classes)

    def check_space_bits(self, space) -> None:
        """Refuse a space whose policy offers bits the target does not execute, naming the gene."""
        for g in space.policy_genes:
            for o in g.options:
                if tuple(o) not in self.target.bit_options:
                    raise ConfigError(
                        f"{self.source}: space '{space.name}' gene '{g.name}' offers W{o[0]}A{o[1]}, which target "
                        f"'{self.target.name}' does not execute (it runs "
                        f"{', '.join(f'W{w}A{a}' for w, a in self.target.bit_options)})")

    def supernet(self, progress: Callable | None = None):
        """The trained supernet: the configured checkpoint, the run folder's finished one, or trained now."""
        if self._supernet is not None:
            return self._supernet
        if not self.read_only:
            self.writer()
        import torch

        from bitnas.io import sha256_file
        from bitnas.supernets.families import TrainSettings, input_shape, load_checkpoint, load_pretrained

        torch.manual_seed(self.cfg.seed)  # the initial weights: training is deterministic for a seed
        net = self.build_supernet()
        self.check_space_bits(net.space)
        from bitnas.problem import check_evaluation

        check_evaluation(net.space, self.cfg.search.evaluation, f"{self.source}: key 'search.evaluation'", net)
        shape = input_shape(net)
        t = self.cfg.train
        if t.checkpoint:
            path = self.resolve_path(t.checkpoint)
            state = load_checkpoint(net, path, net.space.name, shape)
            self._supernet_fp = str(state.get("fingerprint") or sha256_file(path)[:16])
        else:
            init = None
            if t.init:
                path = self.resolve_path(t.init)
                notes = load_pretrained(net, path, shape)
                if notes and t.epochs == 0:
                    raise ConfigError(f"{self.source}: train.epochs is 0, but {path}: {notes[0]}")
                for note in notes:
                    ui.console.print(f"{path}: {note}")
                init = sha256_file(path)[:16]
            settings = TrainSettings(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, n_random=t.n_random,
                                     distill=t.distill, optimizer=t.optimizer, float_epochs=t.float_epochs,
                                     stage1_epochs=t.stage1_epochs, seed=self.cfg.seed, init=init)
            with ui.progress_bar(f"train supernet ({self.family.name}/{net.space.name})", t.epochs) as update:
                trained = self.family.train(net, self.data(), settings, self.run.supernet,
                                            (lambda e, n, msg: update(e, msg)))
            if not self.read_only:
                atomic_write_json(self.run.train_json, trained)
            self._supernet_fp = str(trained["fingerprint"])
        net.eval()
        self._supernet = net
        return net

    @property
    def supernet_fingerprint(self) -> str:
        self.supernet()
        return str(self._supernet_fp)

    def lut_settings(self) -> dict[str, Any]:
        c = self.cfg.lut
        return {"threads": c.threads, "warmup": c.warmup, "repeats": c.repeats, "rounds": c.rounds,
                "statistic": c.statistic, "blocks": c.blocks}

    def check_lut(self, lut, path: Path, supernet) -> None:
        """Refuse a LUT of another device, target or space, or one that lacks a layer of the space."""
        if lut.target != self.target.name:
            raise LutError(f"{path}: table is for target '{lut.target}', the project's target is "
                           f"'{self.target.name}'")
        if lut.space and lut.space != supernet.space.name:
            raise LutError(f"{path}: table was profiled for space '{lut.space}', the project's space is "
                           f"'{supernet.space.name}'")
        if not self.target.simulated:
            backend = self.target.make_backend(threads=int(lut.measurement.get("threads", 1)))
            lut.check_device(backend.fingerprint(), self.cfg.lut.force)
        from bitnas.latency_luts.build import missing_entries

        missing = missing_entries(lut, supernet)
        if missing:
            raise LutError(f"{path}: no entry for {len(missing)} layer(s) of space '{supernet.space.name}', e.g. "
                           f"{missing[0]}; profile the space again")

    def lut(self):
        """(table, path): the configured LUT file, the run folder's when it was measured with these settings
        on this device, or a fresh profile of the space on the target."""
        if self._lut is not None:
            return self._lut
        if not self.target.has_lut:  # analytic: the cost objectives are the layers' own (checked at load)
            self._lut = (None, None)
            return self._lut
        from bitnas.latency_luts import LatencyTable
        from bitnas.latency_luts.build import profile_supernet, same_settings

        supernet = self.supernet()
        if self.cfg.lut.path:
            path = self.resolve_path(self.cfg.lut.path)
            if not path.is_file():
                raise ConfigError(f"{self.source}: key 'lut.path': {path} not found")
            lut = LatencyTable.load(path)
            self.check_lut(lut, path, supernet)
            self._lut = (lut, path)
            return self._lut
        path = self.run.lut
        if path.exists():
            try:
                lut = LatencyTable.load(path)
                self.check_lut(lut, path, supernet)
                if same_settings(lut, self.lut_settings()):
                    ui.console.print(f"LUT: reusing {path} ({len(lut.entries)} entries measured on this device)")
                    self._lut = (lut, path)
                    return self._lut
                ui.console.print(f"LUT: not reusing {path}: measured with other settings")
            except LutError as exc:
                ui.console.print(f"LUT: not reusing {path}: {exc}")
        if self.read_only:
            raise UserError(f"{path}: a search worker found no usable LUT in the run folder (it profiles nothing)")
        lut = profile_supernet(self.target, supernet, path, **self.lut_settings())
        self._lut = (lut, path)
        return self._lut

    def reduce_range(self) -> bool:
        from bitnas.passes.inc_ptq import resolve_reduce_range

        return resolve_reduce_range("auto")

    def problem(self):
        """The search problem, with its identity (supernet, LUT file, data, calibration, objectives)."""
        from bitnas.io import sha256_file
        from bitnas.problem import Problem, evaluation_id, problem_id, quantization_aware
        from bitnas.supernets.evaluate import calibration_batches

        supernet = self.supernet()
        lut, lut_path = self.lut()
        data = self.data()
        s = self.cfg.search
        calib = calibration_batches(data, s.calib_batches, 64, self.cfg.seed)
        rr = self.reduce_range()
        qaft = s.qaft or QaftSettings()
        ident = problem_id({"supernet": self.supernet_fingerprint,
                            "lut_sha256": sha256_file(lut_path) if lut_path else None,
                            "data": data.name, "data_digest": data.digest(),  # two folders of one name differ
                            "calib_batches": s.calib_batches, "reduce_range": rr,
                            "objectives": [o.name for o in self.objectives],
                            "space": supernet.space.name, "target": self.target.name,
                            "evaluation": evaluation_id(s.evaluation, qaft.epochs, qaft.lr,
                                                        quantization_aware(supernet))})
        return Problem(supernet, data, lut, lut_path, calib, rr, self.objectives, dict(s.constraints), ident,
                       s.accuracy_reference, evaluation=s.evaluation, qaft_epochs=qaft.epochs, qaft_lr=qaft.lr,
                       seed=self.cfg.seed)

    def make_searcher(self, problem):
        s = self.cfg.search
        kwargs = {"pop_size": s.pop_size, **self.search_options}
        if getattr(self.searcher_class, "needs_supernet", False):
            kwargs.update(supernet=problem.supernet, data=problem.data, lut=problem.lut,
                          reduce_range=problem.reduce_range)
        try:
            return self.searcher_class(problem.space, problem.objectives, seed=self.cfg.seed,
                                       constraints=problem.constraints or None, cheap=problem.cheap_evaluator,
                                       **kwargs)
        except TypeError as exc:
            raise ConfigError(f"{self.source}: key 'search.options': searcher '{s.searcher}' does not take "
                              f"these options ({exc})") from None

    # ------------------------------------------------------------------------------------------ search
    def search(self, fresh_study: bool = False) -> dict[str, Any]:
        """Run the configured search into the run folder's study; the front as a table, JSON and a plot."""
        self.writer()
        from bitnas.plots import plot_front, plot_front_bits
        from bitnas.problem import normalized_hv
        from bitnas.searchers import Study, non_dominated, run_search

        problem = self.problem()
        searcher = self.make_searcher(problem)
        s = self.cfg.search
        study_path = self.run.study
        try:
            study = Study(study_path, problem.problem)
        except UserError:
            stale = study_path.with_name(f"study.{problem.problem['hash']}.old.sqlite")
            study_path.rename(stale)
            ui.console.print(f"search: the previous study belongs to another problem; kept as {stale}")
            study = Study(study_path, problem.problem)
        if len(study):
            ui.console.print(f"search: resuming study {study_path} with {len(study)} evaluations")
        ideal, ref = problem.hv_reference()
        rows = [problem.minimization(e.objectives) for e in study.evaluations()]
        history: list[dict[str, float]] = []
        with ui.progress_bar(f"search ({s.searcher})", s.budget) as update:
            def progress(n: int, total: int, obj: dict[str, float]) -> None:
                rows.append(problem.minimization(obj))
                F = np.array(rows)
                front = int(non_dominated(F).sum())
                hv = normalized_hv(F, ideal, ref)
                history.append({"evaluations": n, "front_size": front, "hypervolume": hv})
                update(n, f"front {front} hv {hv:.4f}")

            from bitnas.searchers.executor import project_executor

            with project_executor(self, problem) as executor:  # search.executor: in-process, a pool, Ray
                evals = run_search(searcher, problem.evaluate, s.budget, study, progress, executor=executor)
        F = np.array([problem.minimization(e.objectives) for e in evals]).reshape(len(evals), len(self.objectives))
        feasible = np.array([problem.feasible(e.objectives) for e in evals], bool)
        mask = np.zeros(len(evals), bool)
        if feasible.any():
            idx = np.flatnonzero(feasible)
            mask[idx[non_dominated(F[idx])]] = True
        front = sorted((e for e, m in zip(evals, mask) if m), key=lambda e: tuple(problem.minimization(e.objectives)[1:]))
        front_ids = {e.candidate.id for e in front}
        study.export_json(self.run.search_json, self.objectives, front_ids)
        study.close()
        names = [o.name for o in self.objectives]
        sub_byte = any(o not in ((32, 32), (8, 8)) for g in problem.space.policy_genes for o in g.options)
        ui.show(ui.table(f"Pareto front ({len(front)} of {len(evals)} evaluated, {s.searcher}; * = knee)",
                         ["id", *names, "layers W/A bits" if sub_byte else "INT8 layers"],
                         [[("* " if knee_of(front, problem) is e else "  ") + e.candidate.id,
                           *[e.objectives[n] for n in names], quantized_share(problem.supernet, e.candidate)]
                          for e in front]))
        title = f"bitnas search: {self.family.name}/{problem.space.name} on {self.target.name}, {s.searcher}"
        plot_front(evals, front_ids, self.run.front_png, self.objectives, title)
        if problem.space.policy_genes and front:
            plot_front_bits(front, problem.supernet, self.run.front_bits_png, title + ": bits of the front")
        hv = normalized_hv(F, ideal, ref) if len(F) else 0.0
        summary = {"searcher": s.searcher, "evaluations": len(evals), "front_size": len(front), "hypervolume": hv,
                   "history": history, "study": str(study_path), "search_json": str(self.run.search_json),
                   "plot": str(self.run.front_png), "bits_plot": str(self.run.front_bits_png), "objectives": names,
                   "constraint_violations": [e.candidate.id for e, ok in zip(evals, feasible) if not ok],
                   "front": [{"id": e.candidate.id, **e.objectives} for e in front]}
        ui.console.print(f"search: {len(evals)} evaluations, front {len(front)}, hypervolume {hv:.4f}; plot "
                         f"{self.run.front_png}")
        return summary

    # ------------------------------------------------------------------------------------------ compile
    def build_pipeline(self):
        """The configured passes, each with its typed config; Verify defaults to the target's runtimes."""
        from bitnas.api import PASSES
        from bitnas.pipeline import Sequential

        where = f"{self.source}: compile.passes"
        passes = []
        for i, item in enumerate(self.cfg.compile.passes):
            if isinstance(item, str):
                name, conf = item, {}
            elif isinstance(item, dict) and len(item) == 1:
                name, conf = next(iter(item.items()))
                conf = dict(conf or {})
            else:
                raise ConfigError(f"{where}[{i}] must be a pass name or a map with exactly one pass name")
            cls = PASSES.get(name, f"{where}[{i}]")
            if name == "Verify" and "backends" not in conf:
                conf["backends"] = list(self.target.verify_backends)
            passes.append(cls(validate_config(cls.Config, conf, f"{where}[{i}] {name}")))
        return Sequential(passes)

    def front_records(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Evaluation records of the run folder's search, checked to belong to this project's problem."""
        path = self.run.search_json
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: missing; run 'bitnas search --project {self.run.root}' first") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("evaluations"), list):
            raise UserError(f"{path}: not a bitnas search result (no 'evaluations' list)")
        return data["evaluations"], data.get("problem") or {}

    def pick(self, how: str) -> list[dict[str, Any]]:
        """Evaluation records of the knee, the whole front, or one candidate id, from the search result."""
        from bitnas.searchers import knee_point

        evals, problem = self.front_records()
        current = self.problem().problem
        if problem.get("hash") != current["hash"]:
            raise UserError(f"{self.run.search_json}: the search belongs to another problem (supernet, LUT, data or "
                            f"objectives changed since); search again")
        front = [e for e in evals if e.get("on_front")]
        if how == "all-front":
            return front
        if how == "knee":
            if not front:
                raise UserError(f"{self.run.search_json}: the search has no Pareto front")
            F = np.array([[e["objectives"][o.name] * (1 if o.sense == "min" else -1) for o in self.objectives]
                          for e in front])
            return [front[knee_point(F)]]
        match = [e for e in evals if e.get("id") == how]
        if not match:
            raise UserError(f"{self.run.search_json}: no candidate with id '{how}'")
        return match

    def compile(self, pick: str | None = None, candidate_file: str | Path | None = None,
                out: str | Path | None = None, use_cache: bool = True) -> list:
        """Compile the picked candidates into verified artifacts ``<out>/<candidate id>/``."""
        from bitnas.cache import PassCache
        from bitnas.fingerprint import device_fingerprint
        from bitnas.pipeline import PassContext
        from bitnas.space import Candidate
        from bitnas.supernets.evaluate import accuracy, calibration_batches, prepare_subnet

        if candidate_file is not None:
            records = [read_candidate_file(Path(candidate_file))]
        else:
            records = self.pick(pick or self.cfg.compile.pick)
        supernet = self.supernet()
        data = self.data()
        lut, lut_path = self.lut()
        out_root = Path(out) if out else self.run.artifacts
        cache = PassCache(self.run.cache) if use_cache else None
        env = {"supernet": self.supernet_fingerprint, "data": data.digest()}
        calib = calibration_batches(data, self.cfg.search.calib_batches, 64, self.cfg.seed)
        artifacts = []
        for rec in records:
            cand = supernet.space.validate(Candidate.from_dict(rec))
            layers = supernet.layers(cand)
            obj = dict(rec.get("objectives") or {})
            predicted = {k: v for k, v in obj.items() if isinstance(v, (int, float))}
            pred = lut.predict(layers) if lut is not None else {}
            if "latency_ms" in pred:
                predicted.setdefault("latency_ms", pred["latency_ms"])
            if "energy_mj" in pred:
                predicted.setdefault("energy_mj", pred["energy_mj"])
            if self.target.simulated and lut is not None:  # the accelerator model's own figures, summed
                for key in ("cycles", "stall_cycles", "energy_core_mj", "energy_buffer_mj", "energy_dram_mj"):
                    vals = [lut.entries.get(s.key, {}).get(key) for s in layers]
                    if vals and all(isinstance(v, (int, float)) for v in vals):
                        predicted[key] = float(sum(vals))
            predicted.setdefault("size_bytes", float(sum(s.size_bytes for s in layers)))
            predicted["accuracy_float_subnet"] = accuracy(prepare_subnet(supernet, cand, calib), data)
            folder = out_root / cand.id
            ctx = PassContext(workdir=self.run.work / cand.id, target=self.target.name, seed=self.cfg.seed,
                              cache=cache, env=env, inputs={"supernet": supernet, "data": data},
                              results={"target": {"name": self.target.name,
                                                  "fingerprint": device_fingerprint(self.cfg.lut.threads)},
                                       "lut": ({"path": str(lut_path), "fingerprint": lut.fingerprint,
                                                "statistic": lut.statistic} if lut is not None else None),
                                       "predicted": predicted, "artifact_dir": str(folder.resolve()),
                                       "family": {"name": self.family.name, "space": supernet.space.name}})
            ctx.workdir.mkdir(parents=True, exist_ok=True)
            pipeline = self.pipeline
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
            show_measured(artifact)
            artifacts.append(artifact)
        return artifacts

    # ------------------------------------------------------------------------------------------ all
    def run_all(self) -> dict[str, Any]:
        """Train (or load), profile (or reuse), search, and compile the knee: the whole flow."""
        self.writer()
        self.write_config()
        data = self.data()
        ui.console.print(f"data: {data.name}, train {data.count('train')}, val {data.count('val')}, "
                         f"{data.in_channels}x{data.image_size}x{data.image_size}, {data.num_classes} classes")
        net = self.supernet()
        card = net.space.cardinality()
        ui.console.print(f"space: {net.space.name} ({self.family.name}), {card['joint_cardinality']:.3e} candidates "
                         f"({card['arch_cardinality']:.3e} architectures); target {self.target.name}")
        self.lut()
        summary = self.search()
        arts = self.compile()
        art = arts[0]
        summary.update({"out": str(self.run.root), "artifact": str(art.root), "candidate": art.manifest["candidate"]["id"],
                        "predicted": art.manifest["predicted"], "measured": art.manifest["measured"]})
        ui.console.print(f"artifact: {art.root}/model.onnx  manifest: {art.root}/manifest.json")
        return summary


def knee_of(front: list, problem) -> Any:
    from bitnas.searchers import knee_point

    if not front:
        return None
    return front[knee_point(np.array([problem.minimization(e.objectives) for e in front]))]


def quantized_share(supernet, candidate) -> str:
    """"6/12" (quantized of all layers) for an INT8/FP32 space; else how many layers run at each W/A bits."""
    layers = supernet.layers(candidate)
    q = [s for s in layers if s.w_bits < 32]
    if all(s.bits in ((32, 32), (8, 8)) for s in layers):
        return f"{len(q)}/{len(layers)}"
    from collections import Counter

    counts = Counter(s.bits for s in q)
    return " ".join(f"W{w}A{a}:{n}" for (w, a), n in sorted(counts.items(), reverse=True))


def read_candidate_file(path: Path) -> dict[str, Any]:
    """A candidate record from a JSON file holding a candidate, an evaluation record or a manifest."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read a candidate ({exc})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: a candidate file holds a JSON object")
    cand = record.get("candidate", record)
    if not isinstance(cand, dict) or "arch" not in cand or "policy" not in cand:
        raise UserError(f"{path}: no candidate ('arch' and 'policy') in the file")
    return {"id": cand.get("id"), "arch": cand["arch"], "policy": cand["policy"],
            "objectives": record.get("predicted", record.get("objectives", {}))}


def show_measured(artifact) -> None:
    """The artifact's measured figures per runtime, as a table."""
    m = artifact.manifest.get("measured", {})
    rows = []
    for b, e in m.items():
        if isinstance(e, dict) and "latency_ratio_to_fp32" in e:
            rows.append([b, e["accuracy"] * 100, e["accuracy_fp32"] * 100, e["latency_ms"], e["latency_ms_fp32"],
                         e["latency_ratio_to_fp32"], e.get("top1_agreement_vs_fakequant", float("nan")) * 100])
    if rows:
        first = next(e for e in m.values() if isinstance(e, dict) and "statistic" in e)
        ui.show(ui.table(f"artifact {artifact.manifest['candidate']['id']}: measured (latency: {first['statistic']} "
                         f"of {first['timed_runs']} runs, batch 1, {first['threads']} thread)",
                         ["backend", "acc %", "acc fp32 %", "lat ms", "lat fp32 ms", "ratio", "agree fakeq %"], rows))
