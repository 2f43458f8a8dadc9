"""Elastic model families, their named search spaces, supernet training and data loaders.

Families register in ``bitnas.api.FAMILIES`` (each module of this package that defines one registers it
when imported); the paper-scale spaces of ``paper_spaces`` are for search only.
"""

from __future__ import annotations

from typing import Any

from bitnas.errors import SpaceError
from bitnas.space import SearchSpace
from bitnas.supernets.paper_spaces import PAPER_SPACES


def family_names() -> list[str]:
    from bitnas.api import FAMILIES

    return FAMILIES.names()


def space_names() -> list[str]:
    from bitnas.supernets.families import trainable_spaces

    return sorted(set(trainable_spaces()) | set(PAPER_SPACES))


def get_space(name: str, **shape) -> SearchSpace:
    """The search space ``name``: a family's (built for ``shape``) or a paper-scale one."""
    from bitnas.supernets.families import build_supernet as build
    from bitnas.supernets.families import trainable_spaces

    if name in trainable_spaces():
        return build(name, **shape).space
    if name in PAPER_SPACES:
        return PAPER_SPACES[name]()
    raise SpaceError(f"unknown search space '{name}' (known: {', '.join(space_names())})")


def build_supernet(space: str, family: str | None = None, **shape) -> Any:
    """The untrained supernet of a trainable space (of ``family``, or of the family that has it)."""
    from bitnas.supernets.families import build_supernet as build

    return build(space, family, **shape)


__all__ = ["PAPER_SPACES", "build_supernet", "family_names", "get_space", "space_names"]
