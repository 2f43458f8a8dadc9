"""The ``bitnas`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from bitnas.errors import BitnasError, InternalError, UnsupportedBackendError, UserError


def _cmd_demo(args: argparse.Namespace) -> int:
    from bitnas.config import load_config
    from bitnas.project import Project, ProjectConfig

    cfg = load_config(ProjectConfig, args.config) if args.config else ProjectConfig()
    out = Path(args.out)
    project = Project(cfg, out, str(args.config or "<default project>"),
                      base=Path(args.config).parent if args.config else None)
    if args.fresh and out.exists():
        import shutil

        for path in (project.run.supernet, project.run.lut, project.run.study):
            path.unlink(missing_ok=True)
        shutil.rmtree(project.run.work, ignore_errors=True)
    summary = project.run_all()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from bitnas.project import PROJECT_FILE, Project, ProjectConfig

    out = Path(args.out)
    if (out / PROJECT_FILE).exists() and not args.force:
        raise UserError(f"{out / PROJECT_FILE}: exists (pass --force to replace it)")
    data = {"target": args.target, "family": {"space": args.space, **({"name": args.family} if args.family else {})},
            "data": {"name": args.data, **({"path": args.data_path} if args.data_path else {}),
                     "image_size": args.image_size}}
    from bitnas.api import TARGETS
    from bitnas.config import validate_config

    target = TARGETS.get(args.target, "bitnas init: --target")
    if not target.has_lut:  # an analytic target: the default objectives are the ones it offers
        data["search"] = {"objectives": ["accuracy", "bitops"]}

    cfg = validate_config(ProjectConfig, data, "bitnas init")
    project = Project(cfg, out, "bitnas init")
    print(project.write_config())
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from bitnas.api import TARGETS

    for name, t in TARGETS.items():
        bits = " ".join("FP32" if (w, a) == (32, 32) else f"W{w}A{a}" for w, a in t.bit_options)
        if len(t.bit_options) > 16:
            ws, acts = sorted({w for w, _ in t.bit_options}), sorted({a for _, a in t.bit_options})
            bits = f"W{{{','.join(map(str, ws))}}} x A{{{','.join(map(str, acts))}}}"
        kind = "measured" if not t.simulated else "simulated" if t.has_lut else "analytic"
        print(f"{name:14s} {kind:9s} backend {t.backend or '(none)':9s} {bits:40s} {t.description}")
    return 0


def _cmd_space(args: argparse.Namespace) -> int:
    from bitnas.api import FAMILIES
    from bitnas.supernets import get_space, space_names

    if args.space_cmd == "list":
        families = {s: n for n, f in FAMILIES.items() for s in f.spaces()}
        names = space_names()
        width = max(len(n) for n in names)
        for name in names:
            sp = get_space(name)
            fam = f"family {families[name]}" if name in families else "search only"
            print(f"{name:{width}s} {sp.cardinality()['joint_cardinality']:.3e} candidates  [{fam}]  {sp.description}")
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
    x = _raw_images(art, args.image) if args.image else load_array(args.input).astype(np.float32)
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


def _raw_images(art, paths: list[str]):
    """Raw image files preprocessed as the artifact's manifest records (resize, scale, normalize, channels)."""
    import numpy as np

    from bitnas.onnxio import load_array
    from bitnas.supernets.data import Preprocess, read_image

    record = art.manifest.get("preprocess")
    if not record:
        raise UserError(f"{art.root}: the manifest records no preprocessing (a plug-in data set without one); "
                        "pass network-ready arrays with --input")
    pre = Preprocess.from_dict(record, f"{art.root}/manifest.json")
    out = []
    for p in paths:
        path = Path(p)
        if path.suffix.lower() == ".npy":  # raw values in the data set's own units
            out.append(pre.apply(load_array(path)))
            continue
        # read as the data set's images were: grayscale for a one-channel record, else RGB
        out.append(pre.apply(read_image(path, len(pre.mean)), raw_scale=255.0))
    return np.concatenate(out)


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
    "bitnas.cli_import",
    "bitnas.cli_profile",
    "bitnas.cli_search",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = argparse.ArgumentParser(prog="bitnas", description="Hardware-aware deployment compiler for quantized networks.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)

    d = sub.add_parser("demo", help="run a project end to end: train, profile, search, compile the knee (default: "
                                    "the embedded digits project)")
    d.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    d.add_argument("--config", help="project YAML (see README); unknown keys are errors")
    d.add_argument("--fresh", action="store_true", help="ignore the supernet checkpoint, LUT and study in --out")
    d.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    d.set_defaults(fn=_cmd_demo)

    i = sub.add_parser("init", help="write a project.yaml (the defaults, with these choices) into a run folder")
    i.add_argument("out", help="run folder")
    i.add_argument("--space", default="mbv2-tiny", help="a trainable space (bitnas space list)")
    i.add_argument("--family", help="its family, or a plug-in 'package.module:attr'")
    i.add_argument("--target", default="ort-cpu", help="a target of 'bitnas targets'")
    i.add_argument("--data", default="digits", help="digits, cifar10, npz, image-folder, or a plug-in "
                                                    "'package.module:attr'")
    i.add_argument("--data-path", help="folder or file of the data set")
    i.add_argument("--image-size", type=int, default=32)
    i.add_argument("--force", action="store_true", help="replace an existing project.yaml")
    i.set_defaults(fn=_cmd_init)

    tg = sub.add_parser("targets", help="the deployment targets: backend, bit options, measured or simulated")
    tg.set_defaults(fn=_cmd_targets)

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
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help=".npy array the model reads as is: one image (C,H,W) or a batch (N,C,H,W)")
    src.add_argument("--image", nargs="+", help="raw images (.png/.jpg/.bmp, 8-bit; or .npy in the data set's raw "
                                                "units) preprocessed as the manifest records")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--logits", action="store_true", help="print logits for any batch size")
    r.set_defaults(fn=_cmd_run)

    v = sub.add_parser("verify", help="re-check an artifact's checksums, then run it")
    v.add_argument("artifact")
    v.add_argument("--backend", nargs="+", default=["ort", "openvino"], help="runtimes to run it on")
    v.set_defaults(fn=_cmd_verify)

    rp = sub.add_parser("report", help="one self-contained HTML page of a run folder: front, hypervolume, bit "
                                       "widths, LUT fidelity, the artifact's latency breakdown and manifest")
    rp.add_argument("run", help="the run folder (holding project.yaml and a search result)")
    rp.add_argument("--out", help="HTML file to write (default RUN/report.html)")
    rp.set_defaults(fn=_cmd_report)
    return p


def _cmd_report(args: argparse.Namespace) -> int:
    from bitnas.report import write_report

    print(write_report(args.run, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    finally:
        from bitnas.runlock import release_all

        release_all()  # the run folders this command wrote are free for the next one


def _run(args: argparse.Namespace) -> int:
    try:
        return args.fn(args)
    except UserError as exc:
        print(f"bitnas: error: {exc}", file=sys.stderr)
        return 2
    except UnsupportedBackendError as exc:
        print(f"bitnas: error: {exc}", file=sys.stderr)
        return 3
    except BitnasError as exc:
        if isinstance(exc, InternalError):
            return _crash()
        print(f"bitnas: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bitnas: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - any other exception is a crash: exit 70, never 1 (gate's "regression")
        return _crash()


def _crash() -> int:
    traceback.print_exc()
    print("bitnas: internal error (a bug in bitnas; please report it with the traceback above)", file=sys.stderr)
    return 70


if __name__ == "__main__":
    sys.exit(main())
