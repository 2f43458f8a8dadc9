"""Elastic model families, their named search spaces, supernet training and data loaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bitnas.errors import SpaceError
from bitnas.space import SearchSpace
from bitnas.supernets.mbv2 import MBV2Def, MBV2Supernet, build_space, mbv2_tiny
from bitnas.supernets.paper_spaces import PAPER_SPACES

# name -> factory(in_channels, image_size, num_classes) of the family definition
SPACES: dict[str, Callable[..., MBV2Def]] = {
    "mbv2-tiny": mbv2_tiny,
}


def _families() -> dict[str, tuple[Callable[[Any], Any], dict[str, Callable[..., Any]]]]:
    """family -> (supernet class taking a definition, {space name: definition factory})."""
    from bitnas.supernets.mbv3 import MBV3Supernet, qfa_mbv3_tiny
    from bitnas.supernets.resnet import ResNetSupernet, ofa_resnet_tiny
    from bitnas.supernets.transformer import TransformerSupernet, vit_tiny

    return {
        "mbv2": (MBV2Supernet, dict(SPACES)),
        "mbv3": (MBV3Supernet, {"qfa-mbv3-tiny": qfa_mbv3_tiny}),
        "resnet": (ResNetSupernet, {"ofa-resnet-tiny": ofa_resnet_tiny}),
        "vit": (TransformerSupernet, {"vit-tiny": vit_tiny}),
    }


def family_names() -> list[str]:
    return sorted(_families())


def _family_spaces() -> dict[str, tuple[str, Callable[..., Any]]]:
    return {space: (fam, factory) for fam, (_, spaces) in _families().items() for space, factory in spaces.items()}


def space_names() -> list[str]:
    return sorted(set(SPACES) | set(PAPER_SPACES) | set(_family_spaces()))


def space_def(name: str, in_channels: int = 1, image_size: int = 32, num_classes: int = 10) -> MBV2Def:
    """The definition of an elastic MobileNetV2 space: what the profiler, the demo and ``lut validate`` take."""
    try:
        factory = SPACES[name]
    except KeyError:
        if name in PAPER_SPACES:
            what = "a paper-scale space for search only (no supernet to measure)"
        elif name in _family_spaces():
            what = (f"a space of the '{_family_spaces()[name][0]}' family (bitnas train-supernet --family "
                    f"{_family_spaces()[name][0]}); its layers are not enumerated for profiling yet")
        else:
            raise SpaceError(f"unknown search space '{name}' (known: {', '.join(space_names())})") from None
        raise SpaceError(f"space '{name}' is {what}; this command takes the MobileNetV2 spaces: "
                         f"{', '.join(sorted(SPACES))}") from None
    return factory(in_channels=in_channels, image_size=image_size, num_classes=num_classes)


def get_space(name: str, **shape) -> SearchSpace:
    if name in SPACES:
        return build_space(space_def(name, **shape))
    if name in PAPER_SPACES:
        return PAPER_SPACES[name]()
    fam = _family_spaces().get(name)
    if fam is None:
        raise SpaceError(f"unknown search space '{name}' (known: {', '.join(space_names())})")
    return fam[1](**shape).space()


def build_supernet(name: str, **shape) -> MBV2Supernet:
    return MBV2Supernet(space_def(name, **shape))


def build_family(family: str, space: str, **shape) -> Any:
    """The weight-sharing supernet of ``family`` over its space ``space`` (tiny, trainable definitions)."""
    fams = _families()
    if family not in fams:
        raise SpaceError(f"unknown family '{family}' (known: {', '.join(sorted(fams))})")
    cls, spaces = fams[family]
    if space not in spaces:
        hint = " (paper spaces are for search only; train a family space)" if space in PAPER_SPACES else ""
        raise SpaceError(f"family '{family}' has no space '{space}'{hint}; it has: {', '.join(sorted(spaces))}")
    return cls(spaces[space](**shape))


__all__ = ["PAPER_SPACES", "SPACES", "build_family", "build_supernet", "family_names", "get_space", "space_def",
           "space_names"]
