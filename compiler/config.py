"""Typed, validated configuration; YAML files load with ``yaml.safe_load`` and fail on the first root cause."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bitnas.errors import ConfigError


class StrictModel(BaseModel):
    """Frozen config model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def validate_config(model: type[M], data: Any, source: str = "<config>") -> M:
    """Validate ``data`` against ``model``; raise one ``ConfigError`` naming the source and key at fault."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # an unknown key is most often a typo of an intended one: it is the root cause to report
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        where = _loc(first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: unknown key '{where}'") from None
        raise ConfigError(f"{source}: key '{where}': {first['msg']}") from None


def load_config(model: type[M], path: str | Path) -> M:
    """Load a YAML file into ``model``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate_config(model, data, str(path))


class DataConfig(StrictModel):
    name: Literal["digits", "cifar10", "npz"] = Field("digits", description="data set: embedded digits, a CIFAR-10 folder, or an .npz file")
    path: str | None = Field(None, description="folder (cifar10) or file (npz); unused for digits")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of the digits set held out for validation")
    image_size: int = Field(32, ge=8, le=256, description="side of the square images fed to the network")


class SupernetConfig(StrictModel):
    space: str = Field("mbv2-tiny", description="name of the search space / elastic family (bitnas space list)")
    epochs: int = Field(12, ge=1, description="supernet training epochs")
    batch_size: int = Field(64, ge=1, description="training batch size")
    lr: float = Field(0.05, gt=0.0, description="peak SGD learning rate (cosine schedule)")
    n_random: int = Field(2, ge=0, description="random subnets per step besides the largest and smallest")
    distill: bool = Field(True, description="in-place distillation from the largest subnet")


class LutConfig(StrictModel):
    threads: int = Field(1, ge=1, description="intra-op threads the runtime uses while measuring")
    warmup: int = Field(10, ge=0, description="runs discarded before timing each layer")
    repeats: int = Field(60, ge=5, description="timed runs per layer")
    rounds: int = Field(3, ge=1, description="interleaved passes over all layers the repeats are split into")
    statistic: Literal["median", "p10", "mean"] = Field("median", description="statistic used to predict")


class SearchConfig(StrictModel):
    algorithm: Literal["nsga2"] = Field("nsga2", description="search strategy")
    budget: int = Field(120, ge=2, description="true evaluations (distinct candidates)")
    pop_size: int = Field(20, ge=2, description="population size")
    calib_batches: int = Field(4, ge=1, description="train batches (of 64) that recalibrate BN and calibrate "
                               "activation ranges, in the search and in static PTQ alike")


class CompileConfig(StrictModel):
    pick: Literal["knee"] = Field("knee", description="which Pareto point to compile")
    backends: tuple[Literal["ort", "openvino", "tvm"], ...] = Field(("ort", "openvino", "tvm"),
                                                                    description="runtimes Verify runs")
    latency_repeats: int = Field(300, ge=10, description="timed runs per model when Verify measures latency")
    threads: int = Field(1, ge=1, description="intra-op threads while measuring")


class DemoConfig(StrictModel):
    seed: int = Field(0, description="seed passed to every random step")
    data: DataConfig = DataConfig()
    supernet: SupernetConfig = SupernetConfig()
    lut: LutConfig = LutConfig()
    search: SearchConfig = SearchConfig()
    compile: CompileConfig = CompileConfig()
