"""The ``bitnas`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from bitnas.errors import BitnasError, InternalError, UnsupportedBackendError, UserError


def _cmd_demo(args: argparse.Namespace) -> int:
    from bitnas.config import DemoConfig, load_config
    from bitnas.demo import run_demo

    cfg = load_config(DemoConfig, args.config) if args.config else DemoConfig()
    out = Path(args.out)
    if args.fresh and out.exists():
        import shutil

        for name in ("supernet.pt", "lut.json", "study.sqlite"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "work", ignore_errors=True)
    summary = run_demo(cfg, out)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_space(args: argparse.Namespace) -> int:
    from bitnas.supernets import get_space, space_names

    if args.space_cmd == "list":
        names = space_names()
        width = max(len(n) for n in names)
        for name in names:
            sp = get_space(name)
            print(f"{name:{width}s} {sp.cardinality()['joint_cardinality']:.3e} candidates  {sp.description}")
        return 0
    info = get_space(args.name).info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k in ("name", "description", "arch_cardinality", "policy_cardinality", "joint_cardinality",
                  "log10_arch", "log10_policy", "log10_joint", "n_genes"):
            print(f"{k}: {info[k]}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from bitnas.artifact import Artifact
    from bitnas.backends import get_backend
    from bitnas.onnxio import input_names, load_array, load_onnx

    art = Artifact.load(args.artifact)
    model = load_onnx(art.model_path)
    x = load_array(args.input).astype(np.float32)
    expected = [d.dim_value or None for d in model.graph.input[0].type.tensor_type.shape.dim]
    if x.ndim == len(expected) - 1:
        x = x[None]
    if x.ndim != len(expected) or any(e is not None and e != s for e, s in zip(expected[1:], x.shape[1:])):
        raise UserError(f"{args.input}: shape {x.shape} does not fit the model input {expected}")
    from bitnas.passes.verify import run_batched

    backend = get_backend(args.backend, threads=args.threads)
    logits = run_batched(backend, backend.compile(art.model_path), x, input_name=input_names(model)[0])
    result = {"backend": args.backend, "shape": list(logits.shape), "top1": logits.argmax(1).tolist()}
    if args.logits or len(x) <= 4:
        result["logits"] = np.round(logits, 5).tolist()
    print(json.dumps(result))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    import numpy as np

    from bitnas.artifact import Artifact
    from bitnas.backends import get_backend
    from bitnas.onnxio import input_names, load_onnx
    from bitnas.passes.verify import run_batched

    art = Artifact.load(args.artifact)
    model = load_onnx(art.model_path)
    dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).normal(size=dims).astype(np.float32)
    outputs = {}
    for name in args.backend:
        backend = get_backend(name)
        y = run_batched(backend, backend.compile(art.model_path), x, input_name=input_names(model)[0])
        if not np.all(np.isfinite(y)):
            raise UserError(f"{art.model_path}: {name} produced non-finite outputs")
        outputs[name] = y
    agree = {f"{a}~{b}": bool(np.argmax(outputs[a]) == np.argmax(outputs[b]))
             for a in outputs for b in outputs if a < b}
    print(f"{art.root}: checksums match, model.onnx is valid ONNX and runs on {', '.join(outputs)} "
          f"(candidate {art.manifest['candidate']['id']}; same top-1: {agree or 'n/a'})")
    return 0


# Modules that add sub-commands: each has ``register(subparsers)`` and sets ``fn`` on its parsers.
COMMAND_MODULES: tuple[str, ...] = (
    "bitnas.cli_compile",
    "bitnas.cli_profile",
    "bitnas.cli_search",
    "bitnas.cli_train",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = argparse.ArgumentParser(prog="bitnas", description="Hardware-aware deployment compiler for quantized networks.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)

    d = sub.add_parser("demo", help="train, profile, search and compile on the embedded digits data")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--config", help="YAML config (see README); unknown keys are errors")
    d.add_argument("--fresh", action="store_true", help="ignore the supernet checkpoint, LUT and study in --out")
    d.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    d.set_defaults(fn=_cmd_demo)

    s = sub.add_parser("space", help="search spaces")
    ssub = s.add_subparsers(dest="space_cmd", required=True)
    ssub.add_parser("list", help="list named spaces")
    si = ssub.add_parser("info", help="cardinality and choices of a space")
    si.add_argument("name")
    si.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_space)

    r = sub.add_parser("run", help="run an artifact on a backend")
    r.add_argument("artifact", help="artifact folder (holds model.onnx and manifest.json)")
    r.add_argument("--backend", default="ort", choices=["ort", "openvino", "tvm"])
    r.add_argument("--input", required=True, help=".npy array: one image (C,H,W) or a batch (N,C,H,W)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--logits", action="store_true", help="print logits for any batch size")
    r.set_defaults(fn=_cmd_run)

    v = sub.add_parser("verify", help="re-check an artifact's checksums, then run it")
    v.add_argument("artifact")
    v.add_argument("--backend", nargs="+", default=["ort", "openvino"], help="runtimes to run it on")
    v.set_defaults(fn=_cmd_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as exc:
        print(f"bitnas: error: {exc}", file=sys.stderr)
        return 2
    except UnsupportedBackendError as exc:
        print(f"bitnas: error: {exc}", file=sys.stderr)
        return 3
    except InternalError:
        traceback.print_exc()
        print("bitnas: internal error (a bug in bitnas; please report it with the traceback above)", file=sys.stderr)
        return 70
    except BitnasError as exc:
        print(f"bitnas: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
