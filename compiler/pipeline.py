"""Passes: typed, registered units composed with ``Sequential`` under a ``PassContext``."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from bitnas.api import PASSES
from bitnas.cache import PassCache, codec_by_kind, codec_for, digest
from bitnas.config import StrictModel, validate_config
from bitnas.errors import InternalError


@dataclass
class PassTiming:
    name: str
    seconds: float
    cached: bool = False


@dataclass
class PassContext:
    """What every pass may read or write: target, seed, work folder, shared inputs, results, instruments."""

    workdir: Path
    target: str = "ort-cpu"
    seed: int = 0
    inputs: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    timings: list[PassTiming] = field(default_factory=list)
    on_pass: Callable[[str, str], None] | None = None  # (pass name, "start" | "end" | "cached")
    cache: PassCache | None = None
    env: dict[str, Any] = field(default_factory=dict)  # what passes read besides their input (hashed into keys)

    def need(self, key: str, by: str) -> Any:
        try:
            return self.inputs[key]
        except KeyError:
            raise InternalError(f"pass {by} needs '{key}' in the pass context") from None


class Pass(ABC):
    """One compiler step with a frozen, documented ``Config``; registered by class name."""

    Config: ClassVar[type[BaseModel]] = StrictModel
    cacheable: ClassVar[bool] = True
    # part of the cache key: raised when the pass writes something else for the same input and config, so a
    # run folder's cache from before does not serve the old output
    revision: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # a base class or a composer says ``registered = False`` in its own body
        # (ABCMeta sets __abstractmethods__ only after this hook, so look for abstract members directly)
        abstract = any(getattr(getattr(cls, n, None), "__isabstractmethod__", False) for n in dir(cls))
        if not abstract and cls.__dict__.get("registered", True):
            PASSES.register(cls.__name__, cls)

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

    def cache_key(self, input_digest: str, ctx: PassContext) -> str:
        return digest(self.name, self.revision, self.config.model_dump(mode="json"), input_digest, ctx.env, ctx.seed,
                      ctx.target)


def _snapshot(results: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in results.items()}


class Sequential(Pass):
    """Runs passes in order, timing each; with a cache in the context, reuses outputs whose key it has."""

    cacheable = False
    registered = False

    def __init__(self, passes: Sequence[Pass]):
        super().__init__()
        self.passes = list(passes)

    def run(self, model: Any, ctx: PassContext) -> Any:
        from bitnas.space import Candidate

        if isinstance(model, Candidate):
            ctx.inputs["candidate"] = model
        for p in self.passes:
            self._remember(model, ctx)
            codec = codec_for(model) if (ctx.cache is not None and p.cacheable) else None
            key = p.cache_key(codec.digest(model, ctx), ctx) if codec is not None else None
            hit = ctx.cache.get(key) if key is not None else None
            t0 = time.perf_counter()
            if hit is not None:
                folder, meta = hit
                model = codec_by_kind(meta["kind"]).load(folder, ctx)
                ctx.results.update(meta["results"])
                ctx.timings.append(PassTiming(p.name, time.perf_counter() - t0, cached=True))
                if ctx.on_pass:
                    ctx.on_pass(p.name, "cached")
                continue
            if ctx.on_pass:
                ctx.on_pass(p.name, "start")
            before = _snapshot(ctx.results)
            model = p.run(model, ctx)
            ctx.timings.append(PassTiming(p.name, time.perf_counter() - t0))
            if key is not None:
                after = _snapshot(ctx.results)
                delta = {k: ctx.results[k] for k, v in after.items() if before.get(k) != v}
                ctx.cache.put(key, model, json.loads(json.dumps(delta, default=str)), ctx)
            if ctx.on_pass:
                ctx.on_pass(p.name, "end")
        self._remember(model, ctx)
        return model

    @staticmethod
    def _remember(model: Any, ctx: PassContext) -> None:
        """Keep the latest value of each kind (e.g. ``last_static_net``) for passes that look back."""
        codec = codec_for(model)
        if codec is not None:
            ctx.inputs[f"last_{codec.kind}"] = model


def make_pass(name: str, config: dict[str, Any] | None = None) -> Pass:
    return PASSES.get(name)(config)
