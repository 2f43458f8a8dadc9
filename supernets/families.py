"""The ``Family`` record bitnas's own families and a user's plug-in share, and the supernet helpers.

A family is a name, its named spaces (each a factory of the supernet's definition for an input shape),
the supernet class built from a definition, and its training recipe. ``build_supernet(space)`` finds the
family of any registered space, so no command needs to know which family a space belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitnas.api import FAMILIES
from bitnas.errors import ConfigError, SpaceError, UserError


@dataclass(frozen=True)
class TrainSettings:
    """How a supernet trains: what every family's ``train`` receives (from the project's ``train`` section)."""

    epochs: int = 12
    batch_size: int = 64
    lr: float | None = None  # None: the family's default
    n_random: int = 2
    distill: bool = True
    optimizer: str | None = None  # None: the family's default
    float_epochs: int = 0  # QAT families: float pretraining before the low-bit stages
    stage1_epochs: int | None = None
    seed: int = 0
    init: str | None = None  # fingerprint of the weights training starts from (None: the seeded random init)


TrainFn = Callable[[Any, Any, TrainSettings, Path | None, Callable | None], dict[str, Any]]


def sandwich_train(net, data, s: TrainSettings, checkpoint: Path | None, progress: Callable | None) -> dict[str, Any]:
    """Float supernet training with the sandwich rule and in-place distillation (once-for-all, BigNAS)."""
    from bitnas.supernets.train import train_supernet

    return train_supernet(net, data, s.epochs, s.batch_size, s.lr or 0.05, s.n_random, s.distill, s.seed,
                          checkpoint=checkpoint, init=s.init,
                          progress=(lambda e, n, h: progress(e, n, f"loss {h['loss']:.3f} largest "
                                                                   f"{h['acc_largest']:.3f} smallest "
                                                                   f"{h['acc_smallest']:.3f}"))
                          if progress else None)


def qat_train(net, data, s: TrainSettings, checkpoint: Path | None, progress: Callable | None,
              default_optimizer: str = "sgd") -> dict[str, Any]:
    """Sandwich-rule training through a bit schedule: float for INT8/FP32 spaces (post-training
    quantization), QFA's two stages for low-bit spaces (LSQ weights, BatchQuant activations)."""
    from bitnas.supernets.qat_train import default_schedule, policy_bits, train_qat_supernet

    low = [b for b in policy_bits(net.space) if b < 8]
    schedule = (default_schedule(net.space, s.epochs, s.float_epochs, s.stage1_epochs) if low
                else [(s.epochs, (32,))])
    optimizer = s.optimizer or default_optimizer
    lr = s.lr if s.lr is not None else (0.004 if optimizer == "adamw" else 0.05)

    def on_epoch(epoch: int, epochs: int, rec: dict) -> None:
        if progress:
            progress(epoch, epochs, f"loss {rec['loss']:.3f} largest {rec['acc_largest']:.3f} "
                                    f"smallest {rec['acc_smallest']:.3f}")

    return train_qat_supernet(net, data, schedule, batch_size=s.batch_size, lr=lr, optimizer=optimizer,
                              n_random=s.n_random, seed=s.seed, checkpoint=checkpoint, on_epoch=on_epoch,
                              init=s.init)


@dataclass(frozen=True)
class BuiltinFamily:
    """A family built from a supernet class, its named space factories and a training recipe."""

    name: str
    supernet_class: Callable[[Any], Any]
    space_factories: dict[str, Callable[..., Any]]
    trainer: TrainFn = sandwich_train
    description: str = ""
    train_options: dict[str, Any] = field(default_factory=dict)

    def spaces(self) -> dict[str, str]:
        return {n: getattr(f(), "description", "") for n, f in self.space_factories.items()}

    def definition(self, space: str, in_channels: int, image_size: int, num_classes: int) -> Any:
        if space not in self.space_factories:
            raise SpaceError(f"family '{self.name}' has no space '{space}'; it has: "
                             f"{', '.join(sorted(self.space_factories))}")
        return self.space_factories[space](in_channels=in_channels, image_size=image_size, num_classes=num_classes)

    def build(self, space: str, in_channels: int, image_size: int, num_classes: int) -> Any:
        return self.supernet_class(self.definition(space, in_channels, image_size, num_classes))

    def train(self, supernet, data, settings: TrainSettings, checkpoint: Path | None = None,
              progress: Callable | None = None) -> dict[str, Any]:
        return self.trainer(supernet, data, settings, checkpoint, progress, **self.train_options)


def register_family(family: Any) -> Any:
    """Register a family (anything with ``name``, ``spaces()``, ``build(...)``, ``train(...)``)."""
    return FAMILIES.register(family.name, family)


def check_family(family: Any, where: str, ref: str = "") -> Any:
    """``family`` if it is a family; an adapter of a user's supernet (``space`` and ``extract``, see
    ``bitnas.supernets.adapter``) as its family; else one error naming what it lacks."""
    from bitnas.supernets.adapter import AdapterFamily, is_adapter

    if is_adapter(family):
        return AdapterFamily(family, ref or getattr(family, "name", "") or where)
    for attr in ("name", "spaces", "build", "train"):
        if not hasattr(family, attr):
            raise ConfigError(f"{where}: {family!r} is not a bitnas family (it lacks '{attr}'; see bitnas.api.Family)")
    return family


def family_of_space(space: str) -> str:
    """The registered family that has a space called ``space``."""
    for name, fam in FAMILIES.items():
        if space in fam.spaces():
            return name
    from bitnas.supernets.paper_spaces import PAPER_SPACES

    if space in PAPER_SPACES:
        raise SpaceError(f"space '{space}' is a paper-scale space for search only (no supernet to measure); "
                         f"trainable spaces: {', '.join(trainable_spaces())}")
    raise SpaceError(f"unknown search space '{space}' (trainable spaces: {', '.join(trainable_spaces())})")


def trainable_spaces() -> list[str]:
    return sorted(s for _, fam in FAMILIES.items() for s in fam.spaces())


def build_supernet(space: str, family: str | None = None, in_channels: int = 1, image_size: int = 32,
                   num_classes: int = 10) -> Any:
    """The (untrained) supernet of ``space``, of ``family`` or of whichever family has that space."""
    ref = family or family_of_space(space)
    fam = check_family(FAMILIES.get(ref, "family.name"), "family.name", ref)
    if space not in fam.spaces():
        raise SpaceError(f"family '{fam.name}' has no space '{space}'; it has: {', '.join(sorted(fam.spaces()))}")
    net = fam.build(space, in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    for attr in ("space", "layers", "extract", "all_layer_specs"):
        if not hasattr(net, attr):
            raise ConfigError(f"family '{fam.name}': its supernet lacks '{attr}' (see bitnas.api.Supernet)")
    return net


def input_shape(supernet: Any) -> tuple[int, int, int]:
    """(channels, height, width) of the supernet's input."""
    shape = getattr(supernet, "input_shape", None)
    if shape is not None:
        return tuple(int(v) for v in shape)
    d = supernet.d
    return (int(d.in_channels), int(d.image_size), int(d.image_size))


def fusion_units(supernet: Any, samples: int = 400, seed: int = 0) -> list[tuple]:
    """The fusion units the LUT measures whole: the family's own list when it has one (``fusion_units()``),
    else every distinct block (see ``group_units``) of ``samples`` seeded random subnets, in float."""
    fn = getattr(supernet, "fusion_units", None)
    if fn is not None:
        return list(fn())
    import numpy as np

    from bitnas.latency_luts.lut import group_units
    from bitnas.space import FLOAT_BITS

    rng = np.random.default_rng(seed)
    space = supernet.space
    seen: dict[tuple[str, ...], tuple] = {}
    for _ in range(samples):
        c = space.sample(rng)
        c = space.make(c.arch_dict, {g.name: FLOAT_BITS if FLOAT_BITS in g.options else g.options[0]
                                     for g in space.policy_genes})
        for unit in group_units(supernet.layers(c)):
            if len(unit) > 1:
                unit = tuple(s.with_bits(FLOAT_BITS) for s in unit)
                seen.setdefault(tuple(s.key for s in unit), unit)
    return list(seen.values())


def load_pretrained(supernet: Any, path: Path, shape: tuple[int, int, int]) -> list[str]:
    """Load the weights training starts from (``train.init``): the family's own reader when it has one
    (``load_pretrained(path)``, e.g. once-for-all checkpoints), else a bitnas supernet checkpoint. Returns
    notes on what was not taken (e.g. a classifier for another number of classes)."""
    fn = getattr(supernet, "load_pretrained", None)
    if fn is not None:
        return list(fn(path) or [])
    load_checkpoint(supernet, path, supernet.space.name, shape)
    return []


def read_weights(path: Path, what: str) -> dict[str, Any]:
    """A dict read weights-only from ``path`` (tensors and plain data, never code); one error naming the file."""
    import torch

    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable or hostile file is the user's input
        raise UserError(f"{path}: not a readable weights-only {what} ({exc})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a {what} (top level is {type(state).__name__})")
    return state


def load_checkpoint(supernet: Any, path: Path, space: str, shape: tuple[int, int, int]) -> dict[str, Any]:
    """Load a trained supernet's weights (weights only); a checkpoint of another space or shape is refused."""
    import json

    state = read_weights(path, "supernet checkpoint")
    settings = state.get("settings")
    if isinstance(settings, str):
        try:
            settings = json.loads(settings)
        except json.JSONDecodeError:
            settings = None
    if isinstance(settings, dict):
        if settings.get("space") not in (None, space):
            raise UserError(f"{path}: checkpoint of space '{settings['space']}', but the project's space is "
                            f"'{space}'")
        size = settings.get("image_size")
        if size is not None and int(size) != shape[1]:
            raise UserError(f"{path}: checkpoint trained at {size}x{size} inputs, but the project's data are "
                            f"{shape[1]}x{shape[2]}")
        chans = settings.get("in_channels")
        if chans is not None and int(chans) != shape[0]:
            raise UserError(f"{path}: checkpoint for {chans}-channel inputs, the project's data have {shape[0]}")
    weights = state.get("model", state)
    try:
        supernet.load_state_dict(weights)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()
        raise UserError(f"{path}: weights do not fit the supernet of space '{space}' "
                        f"({first[0] if first else exc})") from None
    supernet.eval()
    return state
