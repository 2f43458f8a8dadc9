"""``bitnas import-supernet``: a project around a trained supernet from another tool's checkpoint."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from bitnas.errors import UserError

# --format -> "module:function" giving (family, space, input channels) of a checkpoint file
FORMATS = {"ofa-mbv3": "bitnas.supernets.ofa:checkpoint_space",
           "ofa-proxyless": "bitnas.supernets.ofa:checkpoint_space",
           "ofa-resnet": "bitnas.supernets.ofa:checkpoint_space"}


def register(sub) -> None:
    p = sub.add_parser("import-supernet", help="write a project (project.yaml) around a trained supernet checkpoint "
                                               "of another tool (once-for-all)")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="checkpoint format")
    p.add_argument("--checkpoint", required=True, help="the checkpoint file (read weights-only)")
    p.add_argument("--out", required=True, help="run folder for the project")
    p.add_argument("--target", default="ort-cpu", help="a target of 'bitnas targets'")
    p.add_argument("--data", default="digits", help="digits, cifar10, npz, image-folder, or a plug-in "
                                                    "'package.module:attr'")
    p.add_argument("--data-path", help="folder or file of the data set")
    p.add_argument("--image-size", type=int, default=224, help="input side the project runs at (default 224)")
    p.add_argument("--epochs", type=int, default=0,
                   help="fine-tuning epochs on the data (default 0: the weights as they are)")
    p.add_argument("--force", action="store_true", help="replace an existing project.yaml")
    p.set_defaults(fn=_cmd_import)


def _cmd_import(args: argparse.Namespace) -> int:
    from bitnas.config import validate_config
    from bitnas.project import PROJECT_FILE, Project, ProjectConfig

    out, ckpt = Path(args.out), Path(args.checkpoint).resolve()
    if (out / PROJECT_FILE).exists() and not args.force:
        raise UserError(f"{out / PROJECT_FILE}: exists (pass --force to replace it)")
    module, fn = FORMATS[args.format].split(":")
    family, space, channels = getattr(importlib.import_module(module), fn)(ckpt)
    if family != args.format:
        raise UserError(f"{ckpt}: --format {args.format}, but the checkpoint holds an {family} supernet")
    data = {"target": args.target, "family": {"name": family, "space": space},
            "data": {"name": args.data, **({"path": args.data_path} if args.data_path else {}),
                     "image_size": args.image_size, "channels": channels},
            "train": {"init": str(ckpt), "epochs": args.epochs}}
    cfg = validate_config(ProjectConfig, data, "bitnas import-supernet")
    print(f"{ckpt.name}: {args.format} supernet, family {family}, space {space}")
    print(Project(cfg, out, "bitnas import-supernet").write_config())
    return 0
