"""``bitnas profile`` (build a target's LUT for any family's space, export or measure bundles) and
``bitnas lut validate`` / ``bitnas lut calibrate``."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bitnas.errors import UserError


def _supernet_of(args: argparse.Namespace):
    """(supernet, project or None): the project's supernet (untrained weights suffice for latency), or the
    supernet of ``--space`` at ``--image-size``/``--in-channels``."""
    if getattr(args, "project", None):
        from bitnas.project import Project

        project = Project.load(args.project)
        net = project.build_supernet().eval()
        project.check_space_bits(net.space)
        return net, project
    from bitnas.supernets.families import build_supernet

    return build_supernet(args.space, args.family, in_channels=args.in_channels, image_size=args.image_size,
                          num_classes=args.num_classes).eval(), None


PROFILE_DEFAULTS = {"threads": 1, "repeats": 60, "warmup": 10, "rounds": 3, "statistic": "p10"}


def _target(name: str):
    from bitnas.api import TARGETS

    return TARGETS.get(name, "--target")


def _cmd_profile(args: argparse.Namespace) -> int:
    from bitnas import ui

    supernet, project = _supernet_of(args)
    # measurement settings not given on the command line: the project's (so search reuses the table), else
    # the profiler's defaults
    own = project.lut_settings() if project is not None else {}
    for key, default in PROFILE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, own.get(key, default))
    blocks = (project.cfg.lut.blocks if project is not None else True) and not args.no_blocks
    target = _target(args.target or (project.cfg.target if project else "ort-cpu"))
    out = args.out
    if project is not None and out is None:
        if target.name != project.target.name:
            raise UserError(f"--target: the project's target is '{project.target.name}'; to profile "
                            f"'{target.name}' for it, pass --out (or change 'target' in {project.source})")
        out = str(project.run.lut)
        project.writer()  # the run folder's LUT: one writer, as for every command that writes there
    if args.bundle:
        return _profile_bundle(args, target, out)
    from bitnas.latency_luts.build import profile_supernet, target_bits

    if args.export_bundle:
        from bitnas.latency_luts.bundle import bundle_runtime, export_bundle
        from bitnas.latency_luts.profiler import block_items, layer_items
        from bitnas.latency_luts.validate import calibration_networks
        from bitnas.passes.inc_ptq import resolve_reduce_range
        from bitnas.supernets.families import fusion_units

        bundle_runtime(target.name)
        reduce_range = resolve_reduce_range({"auto": "auto", "on": True, "off": False}[args.reduce_range])
        bits = target_bits(target, supernet.space)
        units = fusion_units(supernet) if blocks else []
        items = layer_items(supernet.all_layer_specs(), bits) + block_items(units, bits, args.blocks_mixed)
        meas = {"warmup": args.warmup, "repeats": args.repeats, "rounds": args.rounds, "chunk": args.chunk,
                "statistic": args.statistic, "batch": 1}
        with tempfile.TemporaryDirectory(prefix="bitnas-bundle-nets-") as tmp:
            networks = (calibration_networks(supernet, args.calibrate, Path(tmp), reduce_range)
                        if args.calibrate else [])
            with ui.progress_bar("export bundle", len(items)) as update:
                export_bundle(items, args.export_bundle, reduce_range, meas, supernet.space.name, update, networks)
        ui.console.print(f"bundle: {len(items)} models and {len(networks)} calibration subnets -> "
                         f"{args.export_bundle}")
        return 0
    if not out:
        raise UserError("--out: where to write the LUT is required (or pass --project)")
    rr = {"auto": None, "on": True, "off": False}[args.reduce_range]
    profile_supernet(target, supernet, out, threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                     rounds=args.rounds, statistic=args.statistic, blocks=blocks,
                     mixed_fraction=args.blocks_mixed, reduce_range=rr, model_dir=args.model_dir, chunk=args.chunk,
                     calibrate=args.calibrate, preset=args.preset)
    return 0


def _profile_bundle(args: argparse.Namespace, target, out: str | None) -> int:
    from bitnas.latency_luts import bundle_runner
    from bitnas.latency_luts.bundle import bundle_runtime, import_results

    runtime = bundle_runtime(target.name)
    if not out:
        raise UserError("--out: where to write the LUT is required")
    results = args.results
    if results is None:
        results = Path(out).with_name(Path(out).name + ".results.json")
        try:
            bundle_runner.run_bundle(args.bundle, runtime, results, args.threads)
        except bundle_runner.BundleError as exc:
            raise UserError(str(exc)) from None
    lut = import_results(args.bundle, results, target.name)
    lut.save(out)
    print(f"LUT: {len(lut.entries)} layer and {len(lut.blocks)} block entries -> {out}")
    return 0


def _cmd_lut(args: argparse.Namespace) -> int:
    if args.lut_cmd == "calibrate":
        return _cmd_calibrate(args)
    from bitnas.latency_luts.validate import validate

    supernet, project = _supernet_of(args)
    report = validate(args.lut, supernet, args.samples, target=args.target, threads=args.threads,
                      repeats=args.repeats, rounds=args.rounds, seed=args.seed, force=args.force_lut,
                      plot=args.plot, workdir=args.workdir)
    if project is not None:  # kept in the run folder for `bitnas report`
        from bitnas.io import atomic_write_json

        project.writer()
        atomic_write_json(project.run.lut_validate, report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k in ("target", "space", "samples", "mape", "kendall_tau", "within_10pct", "repeatability"):
            print(f"{k}: {report[k]}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from bitnas.latency_luts import LatencyTable
    from bitnas.latency_luts.lut import NETWORK_FEATURES
    from bitnas.latency_luts.validate import calibrate, measured_target

    lut = LatencyTable.load(args.lut)
    target = measured_target(lut.target)
    features = tuple(f.strip() for f in args.features.split(",")) if args.features else None
    unknown = [f for f in features or () if f not in NETWORK_FEATURES]
    if unknown:
        raise UserError(f"--features: unknown feature(s) {unknown} (known: {', '.join(NETWORK_FEATURES)})")
    backend = target.make_backend(threads=int(lut.measurement.get("threads", 1)))
    lut.check_device(backend.fingerprint(), args.force_lut)
    supernet, _ = _supernet_of(args)
    if lut.space and lut.space != supernet.space.name:
        raise UserError(f"{args.lut}: table was profiled for space '{lut.space}', not '{supernet.space.name}'")
    lut.calibration = calibrate(lut, backend, supernet, args.samples, seed=args.seed, repeats=args.repeats,
                                rounds=args.rounds, features=features)
    lut.save(args.out or args.lut)
    cal = lut.calibration
    print(f"calibration: coef {[round(c, 5) for c in cal['coef']]} over {cal['features']}, "
          f"leave-one-out error {100 * cal['residual_sd_rel']:.1f}% -> {args.out or args.lut}")
    return 0


def _space_args(p: argparse.ArgumentParser) -> None:
    """Which supernet: a project's, or any family's named space at an input shape."""
    p.add_argument("--project", help="project.yaml (or its run folder): its family, space and input shape")
    p.add_argument("--space", default="mbv2-tiny", help="without --project: a trainable space (bitnas space list)")
    p.add_argument("--family", help="without --project: the space's family (default: the one that has it)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=10)


def register(sub) -> None:
    p = sub.add_parser("profile", help="measure a target's latency (and energy) LUT for any family's space")
    p.add_argument("--target", help="a target of 'bitnas targets' (default: the project's, else ort-cpu)")
    _space_args(p)
    p.add_argument("--out", help="LUT file to write (default with --project: its run folder's lut.json)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the project's lut.threads, else 1)")
    p.add_argument("--repeats", type=int, help="timed runs per model (default: the project's, else 60)")
    p.add_argument("--warmup", type=int, help="untimed runs per model (default: the project's, else 10)")
    p.add_argument("--rounds", type=int, help="interleaved passes the repeats are split into (default: the "
                                              "project's, else 3)")
    p.add_argument("--chunk", type=int, default=64, help="models measured (interleaved) per checkpoint")
    p.add_argument("--statistic", choices=["median", "p10", "mean"],
                   help="statistic the table predicts with (default: the project's lut.statistic, else p10)")
    p.add_argument("--no-blocks", action="store_true", help="layers only (no fusion units; default with "
                                                            "--project: the project's lut.blocks)")
    p.add_argument("--blocks-mixed", type=float, default=0.15,
                   help="share of mixed-precision block policies measured whole (uniform ones always are)")
    p.add_argument("--reduce-range", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--model-dir", help="keep the layer/block ONNX models here (reused across targets)")
    p.add_argument("--preset", help="BitFusion preset (edge, cloud)")
    p.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="also measure N subnets end to end and fit the network-level correction (measured "
                        "targets; with --export-bundle the subnets travel in the bundle and the import fits it)")
    p.add_argument("--export-bundle", metavar="B.zip", help="write the models + manifest + runner; measure nothing")
    p.add_argument("--bundle", metavar="B.zip", help="measure (or import) a bundle instead of building models")
    p.add_argument("--results", help="with --bundle: import these bundle_runner results instead of measuring")
    p.set_defaults(fn=_cmd_profile)

    lut = sub.add_parser("lut", help="latency tables")
    lsub = lut.add_subparsers(dest="lut_cmd", required=True)
    v = lsub.add_parser("validate", help="measure random subnets end to end and compare with the LUT")
    v.add_argument("--lut", required=True)
    _space_args(v)
    v.add_argument("--samples", type=int, default=50)
    v.add_argument("--target", help="target to measure on (default: the LUT's)")
    v.add_argument("--threads", type=int, default=None, help="default: the LUT's")
    v.add_argument("--repeats", type=int, default=100)
    v.add_argument("--rounds", type=int, default=10)
    v.add_argument("--seed", type=int, default=1)
    v.add_argument("--plot", help="scatter plot file (default next to the LUT)")
    v.add_argument("--workdir", help="keep the subnet ONNX models here")
    v.add_argument("--force-lut", action="store_true", help="use a LUT measured on another device")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=_cmd_lut)
    c = lsub.add_parser("calibrate", help="fit a LUT's network-level correction on subnets measured end to end")
    c.add_argument("--lut", required=True)
    _space_args(c)
    c.add_argument("--samples", type=int, default=120)
    c.add_argument("--features", help="comma-separated calibration features (default: the set of "
                                      "bitnas.latency_luts.lut.CALIBRATION_CANDIDATES with the lowest "
                                      "leave-one-out error on these subnets)")
    c.add_argument("--seed", type=int, default=1000, help="differs from validate's default so they never overlap")
    c.add_argument("--repeats", type=int, default=100)
    c.add_argument("--rounds", type=int, default=10)
    c.add_argument("--out", help="write here instead of updating --lut")
    c.add_argument("--force-lut", action="store_true")
    c.set_defaults(fn=_cmd_lut)
