"""Elastic model families, their named search spaces, supernet training and data loaders."""

from __future__ import annotations

from collections.abc import Callable

from bitnas.errors import SpaceError
from bitnas.space import SearchSpace
from bitnas.supernets.mbv2 import MBV2Def, MBV2Supernet, build_space, mbv2_tiny

# name -> factory(in_channels, image_size, num_classes) of the family definition
SPACES: dict[str, Callable[..., MBV2Def]] = {
    "mbv2-tiny": mbv2_tiny,
}


def space_names() -> list[str]:
    return sorted(SPACES)


def space_def(name: str, in_channels: int = 1, image_size: int = 32, num_classes: int = 10) -> MBV2Def:
    try:
        factory = SPACES[name]
    except KeyError:
        raise SpaceError(f"unknown search space '{name}' (known: {', '.join(space_names())})") from None
    return factory(in_channels=in_channels, image_size=image_size, num_classes=num_classes)


def get_space(name: str, **shape) -> SearchSpace:
    return build_space(space_def(name, **shape))


def build_supernet(name: str, **shape) -> MBV2Supernet:
    return MBV2Supernet(space_def(name, **shape))


__all__ = ["SPACES", "build_supernet", "get_space", "space_def", "space_names"]
