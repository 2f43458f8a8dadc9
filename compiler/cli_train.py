"""``bitnas train-supernet``: train a family's weight-sharing supernet (QFA bit schedule), resumable."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bitnas.errors import ConfigError


def register(sub) -> None:
    t = sub.add_parser("train-supernet", help="train a weight-sharing supernet (resumes from --out)")
    t.add_argument("--family", required=True, help="model family: mbv2, mbv3, resnet, vit")
    t.add_argument("--space", required=True, help="the family's space, e.g. qfa-mbv3-tiny, vit-tiny")
    t.add_argument("--data", default="digits", help="digits (embedded), cifar10 or npz")
    t.add_argument("--data-path", help="folder or file for cifar10/npz")
    t.add_argument("--image-size", type=int, default=16, help="input resolution (default 16)")
    t.add_argument("--epochs", type=int, required=True, help="total epochs over all phases")
    t.add_argument("--float-epochs", type=int, default=0, help="float pretraining epochs (bits {32})")
    t.add_argument("--stage1-epochs", type=int, help="epochs of low bits + 32 (default a third of the rest)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, help="peak learning rate (default: 0.05 with sgd, 0.004 with adamw)")
    t.add_argument("--optimizer", choices=["sgd", "adamw"],
                   help="default: adamw for the transformer family, sgd for the convolutional ones")
    t.add_argument("--n-random", type=int, default=2, help="random subnets per step besides largest/smallest")
    t.add_argument("--checkpoint-every", type=int, default=10, help="also checkpoint every N steps (0: per epoch)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    t.add_argument("--out", required=True, help="checkpoint file (.pt); the plot and history go next to it")
    t.set_defaults(fn=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from bitnas.io import atomic_write_json
    from bitnas.supernets import build_family
    from bitnas.supernets.data import load_dataset
    from bitnas.supernets.qat_train import default_schedule, plot_history, train_qat_supernet
    from bitnas.ui import console, progress_bar

    for name in ("epochs", "batch_size", "image_size"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.data, args.data_path, image_size=args.image_size)
    torch.manual_seed(args.seed)  # the supernet's initial weights
    net = build_family(args.family, args.space, in_channels=data.in_channels, image_size=data.image_size,
                       num_classes=data.num_classes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.family == "mbv2":
        schedule = [(args.epochs, (32,))]  # the MobileNetV2 family trains in float (quantized after training)
    elif args.family in ("vit", "resnet"):
        schedule = [(args.epochs, (32,))]  # SimQ-NAS quantizes these post-training
    else:
        schedule = default_schedule(net.space, args.epochs, args.float_epochs, args.stage1_epochs)
    steps = -(-len(data.y_train) // args.batch_size)
    total = args.epochs * steps
    optimizer = args.optimizer or ("adamw" if args.family == "vit" else "sgd")
    lr = args.lr if args.lr is not None else (0.004 if optimizer == "adamw" else 0.05)
    if lr <= 0:
        raise ConfigError(f"--lr must be positive, got {lr}")
    with progress_bar(f"train {args.space}", total) as update:
        def on_step(epoch: int, step: int, n: int, loss: float) -> None:
            update(epoch * n + step, f"epoch {epoch + 1} loss {loss:.3f}")

        def on_epoch(epoch: int, epochs: int, rec: dict) -> None:
            console.print(f"  epoch {epoch}/{epochs} bits {rec['bits']} loss {rec['loss']:.3f} "
                          f"acc largest {rec['acc_largest']:.3f} smallest {rec['acc_smallest']:.3f} "
                          f"(W/A {rec['eval_bits']})")

        result = train_qat_supernet(net, data, schedule, batch_size=args.batch_size, lr=lr, optimizer=optimizer,
                                    n_random=args.n_random, seed=args.seed, checkpoint=out,
                                    checkpoint_every=args.checkpoint_every, on_step=on_step, on_epoch=on_epoch)
    plot = plot_history(result["history"], out.with_suffix(".png"), f"{args.family} / {args.space}")
    atomic_write_json(out.with_suffix(".json"), {"checkpoint": str(out), "plot": str(plot), **result})
    print(json.dumps({"checkpoint": str(out), "plot": str(plot), "final": result["history"][-1]}))
    return 0
