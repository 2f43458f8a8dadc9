"""Supernet training with the sandwich rule and in-place distillation, checkpointed every epoch."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bitnas.api import TaskData
from bitnas.errors import UserError
from bitnas.io import atomic_torch_save
from bitnas.supernets.data import fast_layout
from bitnas.supernets.evaluate import accuracy, calibration_batches, prepare_subnet
from bitnas.supernets.mbv2 import MBV2Supernet

ProgressFn = Callable[[int, int, dict[str, float]], None]


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def resume_state(ckpt: Path | None, fingerprint: str) -> dict | None:
    """The training state in ``ckpt`` when it was written by a run with the same settings, else None.

    A file that is not a readable bitnas supernet checkpoint is the user's error, named.
    """
    if ckpt is None or not ckpt.exists():
        return None
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{ckpt}: not a readable supernet checkpoint ({exc})") from None
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise UserError(f"{ckpt}: not a bitnas supernet checkpoint")
    if state["fingerprint"] == fingerprint:
        return state
    keep_aside(ckpt, str(state["fingerprint"]))
    return None


def keep_aside(ckpt: Path, fingerprint: str) -> Path:
    """Move a checkpoint of other training settings out of the way (never overwritten), and say where."""
    from bitnas import ui

    stem = f"{ckpt.stem}.{''.join(c for c in fingerprint if c.isalnum())[:16] or 'other'}.old"
    aside, k = ckpt.with_name(f"{stem}{ckpt.suffix}"), 1
    while aside.exists():
        k += 1
        aside = ckpt.with_name(f"{stem}{k}{ckpt.suffix}")
    ckpt.rename(aside)
    ui.console.print(f"{ckpt}: trained with other settings; kept as {aside}")
    return aside


def train_supernet(
    net: MBV2Supernet,
    data: TaskData,
    epochs: int,
    batch_size: int = 64,
    lr: float = 0.05,
    n_random: int = 2,
    distill: bool = True,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    progress: ProgressFn | None = None,
    init: str | None = None,
) -> dict[str, Any]:
    """Train in place; resume from ``checkpoint`` when it holds an unfinished run with the same settings.

    ``init`` fingerprints the weights ``net`` holds on entry when they are not the seeded random init
    (fine-tuning a pretrained supernet): part of the settings, so other start weights train again.

    Each step trains the largest subnet on the labels, then the smallest and ``n_random`` random subnets
    on the largest one's soft predictions (in-place distillation) when ``distill`` is set.
    """
    settings = {"space": net.space.name, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "n_random": n_random, "distill": distill, "seed": seed, "n_train": data.count("train"),
                "in_channels": data.in_channels, "image_size": data.image_size,
                **({"init": init} if init else {})}
    fp = _fingerprint(settings)
    torch.manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=4e-5)
    steps_per_epoch = math.ceil(data.count("train") / batch_size)
    total = epochs * steps_per_epoch
    start_epoch, history = 0, []
    ckpt = Path(checkpoint) if checkpoint else None
    state = resume_state(ckpt, fp)
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        history = json.loads(state["history"])
    for epoch in range(start_epoch, epochs):
        rng = np.random.default_rng([seed, epoch])
        torch.manual_seed(seed * 100003 + epoch)
        net.train()
        losses = []
        for i, (x, y) in enumerate(data.batches("train", batch_size, rng)):
            x = fast_layout(x)
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            opt.zero_grad(set_to_none=True)
            logits = net(x, net.space.largest())
            loss = F.cross_entropy(logits, y)
            loss.backward()
            soft = F.softmax(logits.detach(), dim=1)
            subnets = [net.space.smallest()] + [net.space.sample(rng) for _ in range(n_random)]
            for c in subnets:
                out = net(x, c)
                if distill:
                    sub_loss = F.kl_div(F.log_softmax(out, 1), soft, reduction="batchmean")
                else:
                    sub_loss = F.cross_entropy(out, y)
                sub_loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            losses.append(float(loss.detach()))
        calib = calibration_batches(data, 4, batch_size, seed)
        acc_l = accuracy(prepare_subnet(net, net.space.largest(), calib), data)
        acc_s = accuracy(prepare_subnet(net, net.space.smallest(), calib), data)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "acc_largest": acc_l,
                        "acc_smallest": acc_s})
        if ckpt is not None:
            atomic_torch_save({"fingerprint": fp, "settings": json.dumps(settings), "model": net.state_dict(),
                               "optimizer": opt.state_dict(), "epoch": epoch + 1,
                               "history": json.dumps(history)}, ckpt)
        if progress is not None:
            progress(epoch + 1, epochs, history[-1])
    net.eval()
    return {"settings": settings, "fingerprint": fp, "history": history}
