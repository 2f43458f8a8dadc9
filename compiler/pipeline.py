"""Passes: typed, registered units composed with ``Sequential`` under a ``PassContext``."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from bitnas.config import StrictModel, validate_config
from bitnas.errors import ConfigError, InternalError


@dataclass
class PassTiming:
    name: str
    seconds: float


@dataclass
class PassContext:
    """What every pass may read or write: target, seed, work folder, shared inputs, results, instruments."""

    workdir: Path
    target: str = "ort-cpu"
    seed: int = 0
    inputs: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    timings: list[PassTiming] = field(default_factory=list)
    on_pass: Callable[[str, str], None] | None = None  # (pass name, "start" | "end")

    def need(self, key: str, by: str) -> Any:
        try:
            return self.inputs[key]
        except KeyError:
            raise InternalError(f"pass {by} needs '{key}' in the pass context") from None


PASSES: dict[str, type[Pass]] = {}


class Pass(ABC):
    """One compiler step with a frozen, documented ``Config``; registered by class name."""

    Config: ClassVar[type[BaseModel]] = StrictModel

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None):
            PASSES[cls.__name__] = cls

    def __init__(self, config: BaseModel | dict[str, Any] | None = None, **overrides: Any):
        if isinstance(config, BaseModel):
            self.config = config.model_copy(update=overrides) if overrides else config
        else:
            self.config = validate_config(self.Config, {**(config or {}), **overrides}, f"pass {self.name}")

    @property
    def name(self) -> str:
        return type(self).__name__

    @abstractmethod
    def run(self, model: Any, ctx: PassContext) -> Any:
        """Transform ``model`` and return the result."""


class Sequential(Pass):
    """Runs passes in order, timing each."""

    def __init__(self, passes: Sequence[Pass]):
        super().__init__()
        self.passes = list(passes)

    def run(self, model: Any, ctx: PassContext) -> Any:
        for p in self.passes:
            if ctx.on_pass:
                ctx.on_pass(p.name, "start")
            t0 = time.perf_counter()
            model = p.run(model, ctx)
            ctx.timings.append(PassTiming(p.name, time.perf_counter() - t0))
            if ctx.on_pass:
                ctx.on_pass(p.name, "end")
        return model


def make_pass(name: str, config: dict[str, Any] | None = None) -> Pass:
    try:
        cls = PASSES[name]
    except KeyError:
        raise ConfigError(f"unknown pass '{name}' (known: {', '.join(sorted(PASSES))})") from None
    return cls(config)
