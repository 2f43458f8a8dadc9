"""Typed, validated configuration; YAML files load with ``yaml.safe_load`` and fail on the first root cause."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from bitnas.errors import ConfigError


class StrictModel(BaseModel):
    """Frozen config model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


def _plain_onnx_name(name: str) -> str:
    """A file name a pass writes in its work folder: one plain ``*.onnx`` name, never a path out of it."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).is_absolute():
        raise ValueError(f"'{name}' is not a plain file name (a pass writes only inside its work folder)")
    if not name.endswith(".onnx") or name.startswith("."):
        raise ValueError(f"'{name}' is not a visible '*.onnx' file name")
    return name


# the ``filename`` of a pass's output: confined to the pass's work folder
WorkFileName = Annotated[str, AfterValidator(_plain_onnx_name)]


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
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate_config(model, data, str(path))
