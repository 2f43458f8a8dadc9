"""Quantization-aware supernet training (QFA): sandwich rule, in-place distillation, staged bit schedule.

Each step trains the largest architecture at a random uniform bitwidth on the labels, then the smallest
architecture at a random uniform bitwidth and ``n_random`` random subnets with random mixed-precision
policies on the largest one's soft predictions. The bit schedule runs phases (e.g. float pretraining, then
{2,3,4,32}, then {2,3,4}). Checkpoints are written atomically every ``checkpoint_every`` steps and at the end
of every epoch, and a run resumes from the exact step it stopped at.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bitnas.api import TaskData
from bitnas.errors import ConfigError
from bitnas.io import atomic_torch_save
from bitnas.space import Candidate, SearchSpace
from bitnas.supernets.data import fast_layout
from bitnas.supernets.evaluate import accuracy, calibration_batches
from bitnas.supernets.qat import calibrate
from bitnas.supernets.train import resume_state

StepFn = Callable[[int, int, int, float], None]  # (epoch, step in epoch, steps per epoch, loss)
EpochFn = Callable[[int, int, dict[str, float]], None]


def policy_bits(space: SearchSpace) -> list[int]:
    """Every bitwidth (weights or activations) that some searchable policy gene offers."""
    out = set()
    for g in space.policy_genes:
        if len(g.options) > 1:
            for w, a in g.options:
                out.update((w, a))
    return sorted(out)


def default_schedule(space: SearchSpace, epochs: int, float_epochs: int = 0,
                     stage1_epochs: int | None = None) -> list[tuple[int, tuple[int, ...]]]:
    """QFA's two stages after optional float pretraining: low bits + 32, then low bits only.

    ``stage1_epochs=0`` gives QFA's single-stage baseline: low bits only from the start (one phase)."""
    low = tuple(b for b in policy_bits(space) if b < 32)
    if stage1_epochs is None:
        stage1_epochs = (epochs - float_epochs) // 3
    stage2 = epochs - float_epochs - stage1_epochs
    if min(float_epochs, stage1_epochs, stage2) < 0:
        raise ConfigError(f"bit schedule: float {float_epochs} + stage-1 {stage1_epochs} epochs exceed {epochs}")
    phases = [(float_epochs, (32,)), (stage1_epochs, low + (32,)), (stage2, low)]
    return [(e, b) for e, b in phases if e > 0]


def restrict(space: SearchSpace, candidate: Candidate, allowed: Sequence[int], rng: np.random.Generator,
             uniform: int | None = None) -> Candidate:
    """``candidate`` with every searchable policy gene redrawn among options whose W and A are ``allowed``.

    With ``uniform`` set, every searchable gene takes ``(uniform, uniform)`` when it offers it.
    """
    pol = dict(candidate.policy)
    for g in space.policy_genes:
        if len(g.options) == 1:
            continue
        if uniform is not None and (uniform, uniform) in g.options:
            pol[g.name] = (uniform, uniform)
            continue
        ok = [o for o in g.options if o[0] in allowed and o[1] in allowed]
        if ok:
            pol[g.name] = ok[rng.integers(len(ok))]
    return space.validate(Candidate.make(candidate.arch_dict, pol))


def uniform_policy(space: SearchSpace, candidate: Candidate, bits: int) -> Candidate:
    """``candidate`` with every searchable policy gene at W/A ``bits`` (fixed genes keep their option)."""
    return restrict(space, candidate, (bits,), np.random.default_rng(0), uniform=bits)


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def evaluate_subnet(net, candidate: Candidate, data: TaskData, calib: list[torch.Tensor]) -> float:
    """Extract, recalibrate BatchNorm, calibrate BatchQuant, and measure validation accuracy."""
    return accuracy(calibrate(net.extract(candidate), calib), data)


def train_qat_supernet(
    net,
    data: TaskData,
    schedule: Sequence[tuple[int, Sequence[int]]],
    batch_size: int = 64,
    lr: float = 0.05,
    n_random: int = 2,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    eval_bits: int | None = None,
    optimizer: str = "sgd",
    on_step: StepFn | None = None,
    on_epoch: EpochFn | None = None,
    init: str | None = None,
) -> dict[str, Any]:
    """Train ``net`` in place through the phases of ``schedule``; resume from ``checkpoint`` if it matches.
    ``init`` fingerprints pretrained start weights (see ``train_supernet``)."""
    space: SearchSpace = net.space
    epochs = sum(e for e, _ in schedule)
    if epochs <= 0:
        raise ConfigError("training needs at least one epoch")
    low = [b for b in policy_bits(space) if b < 32]
    eval_bits = eval_bits if eval_bits is not None else (max(low) if low else 32)
    settings = {"space": space.name, "family": getattr(net, "family", "?"),
                "schedule": [[int(e), [int(b) for b in bits]] for e, bits in schedule],
                "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "n_random": n_random, "seed": seed,
                "n_train": data.count("train"), "image_size": data.image_size, "eval_bits": eval_bits,
                **({"init": init} if init else {})}
    fp = _fingerprint(settings)
    torch.manual_seed(seed)
    if optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=4e-5)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    else:
        raise ConfigError(f"optimizer '{optimizer}' is not one of: sgd, adamw")
    steps = math.ceil(data.count("train") / batch_size)
    phase_of = [p for p, (e, _) in enumerate(schedule) for _ in range(e)]
    start_epoch, start_step, history, partial = 0, 0, [], []
    ckpt = Path(checkpoint) if checkpoint else None
    state = resume_state(ckpt, fp)
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        history, partial = json.loads(state["history"]), json.loads(state["partial_losses"])

    def save(epoch: int, step: int, losses: list[float]) -> None:
        if ckpt is not None:
            atomic_torch_save({"fingerprint": fp, "settings": json.dumps(settings), "model": net.state_dict(),
                               "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
                               "history": json.dumps(history), "partial_losses": json.dumps(losses)}, ckpt)

    for epoch in range(start_epoch, epochs):
        phase = phase_of[epoch]
        allowed = tuple(int(b) for b in schedule[phase][1])
        phase_start = sum(e for e, _ in schedule[:phase])
        phase_steps = schedule[phase][0] * steps
        order_rng = np.random.default_rng([seed, epoch])
        losses = partial if epoch == start_epoch else []
        first = start_step if epoch == start_epoch else 0
        net.train()
        for i, (x, y) in enumerate(data.batches("train", batch_size, order_rng)):
            if i < first:
                continue
            x = fast_layout(x)
            rng = np.random.default_rng([seed, epoch, i])
            t = (epoch - phase_start) * steps + i
            for g in opt.param_groups:
                g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * t / phase_steps))
            opt.zero_grad(set_to_none=True)
            big = restrict(space, space.largest(), allowed, rng, uniform=int(rng.choice(allowed)))
            logits = net(x, big)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            soft = F.softmax(logits.detach(), dim=1)
            subnets = [restrict(space, space.smallest(), allowed, rng, uniform=int(rng.choice(allowed)))]
            subnets += [restrict(space, space.sample(rng), allowed, rng) for _ in range(n_random)]
            for c in subnets:
                out = net(x, c)
                F.kl_div(F.log_softmax(out, 1), soft, reduction="batchmean").backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            losses.append(float(loss.detach()))
            if checkpoint_every and (i + 1) % checkpoint_every == 0 and i + 1 < steps:
                save(epoch, i + 1, losses)
            if on_step is not None:
                on_step(epoch, i + 1, steps, losses[-1])
        bits = eval_bits if eval_bits in allowed else max(allowed)
        calib = calibration_batches(data, 4, batch_size, seed)
        rec = {"epoch": epoch + 1, "phase": phase, "bits": list(allowed), "loss": float(np.mean(losses)),
               "eval_bits": bits}
        for label, cand in (("largest", space.largest()), ("smallest", space.smallest())):
            rec[f"acc_{label}"] = evaluate_subnet(net, uniform_policy(space, cand, bits), data, calib)
        history.append(rec)
        save(epoch + 1, 0, [])
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs, rec)
    net.eval()
    return {"settings": settings, "fingerprint": fp, "history": history}


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss and largest/smallest subnet accuracy per epoch, written atomically as PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bitnas.io import atomic_write_bytes

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(ep, [h["loss"] for h in history], marker="o")
    a1.set_xlabel("epoch")
    a1.set_ylabel("train loss (largest subnet)")
    for key in ("acc_largest", "acc_smallest"):
        a2.plot(ep, [h[key] for h in history], marker="o", label=key.replace("acc_", ""))
    a2.set_xlabel("epoch")
    a2.set_ylabel("val accuracy (quantized, calibrated)")
    a2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
