"""Import the real ``ofa`` package in tests: it imports torchvision (for its ImageNet data loaders only),
whose wheel does not import with the CPU torch build used here, so a stand-in module is registered first.
bitnas itself never imports ``ofa``."""

from __future__ import annotations

import sys
import types

import pytest

STAND_IN = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.datasets")


def _stand_in_torchvision() -> None:

    class _Unused:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("torchvision stand-in: only ofa's data loaders use it")

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    datasets = types.ModuleType("torchvision.datasets")
    for name in ("RandomResizedCrop", "Compose", "ToTensor", "Normalize", "Resize", "CenterCrop",
                 "RandomHorizontalFlip", "ColorJitter", "InterpolationMode"):
        setattr(transforms, name, _Unused)
    datasets.ImageFolder = _Unused
    transforms.functional = functional
    tv.transforms, tv.datasets = transforms, datasets
    sys.modules.update(dict(zip(STAND_IN, (tv, transforms, functional, datasets))))


def ofa_networks():
    """``ofa.imagenet_classification.elastic_nn.networks`` (the test is skipped without the dev extra)."""
    pytest.importorskip("ofa", reason="the real once-for-all package is a dev extra")
    if "ofa.imagenet_classification.elastic_nn.networks" not in sys.modules:
        _stand_in_torchvision()
        try:
            from ofa.imagenet_classification.elastic_nn import networks  # noqa: F401
        finally:  # ofa's modules keep their references; nothing else may see the stand-in
            for name in STAND_IN:
                sys.modules.pop(name, None)
    return sys.modules["ofa.imagenet_classification.elastic_nn.networks"]
