"""``bitnas profile`` (build a target's LUT, export or measure bundles) and ``bitnas lut validate``."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bitnas.errors import UserError

TARGETS = {"ort-cpu": "ort", "openvino-cpu": "openvino", "tvm-llvm": "tvm", "bitfusion": "bitfusion"}


def _progress(description: str, total: int):
    from bitnas import ui

    return ui.progress_bar(description, total)


def _bits_for(target: str, backend, space_bits) -> list[tuple[int, int]]:
    if target == "bitfusion":
        native = backend.bit_options()
        return native + [b for b in space_bits if b not in native and max(b) <= 16]
    from bitnas.latency_luts.profiler import CPU_BITS

    return [b for b in space_bits if b in CPU_BITS] or list(CPU_BITS)


def _cmd_profile(args: argparse.Namespace) -> int:
    from bitnas import ui

    if args.target not in TARGETS:
        raise UserError(f"--target: unknown target '{args.target}' (known: {', '.join(TARGETS)})")
    if args.bundle:
        return _profile_bundle(args)
    from bitnas.backends import get_backend
    from bitnas.latency_luts.units import space_layers

    if args.target == "bitfusion":
        from bitnas.backends.bitfusion import BitFusionBackend

        backend = BitFusionBackend(threads=args.threads, preset=args.preset)
    else:
        backend = get_backend(TARGETS[args.target], threads=args.threads)
    d, specs, blocks = space_layers(args.space, image_size=args.image_size, in_channels=args.in_channels)
    bits = _bits_for(args.target, backend, list(d.bit_options))
    if args.target == "bitfusion":
        from bitnas.latency_luts.profiler import simulate

        n = len(specs) * len(bits)
        with _progress("simulate BitFusion", n) as update:
            lut = simulate(backend, specs, bits, args.target, d.name, lambda p, dn, t: update(dn, p, t))
        lut.notes.append(f"space bit options not executable by BitFusion: "
                         f"{[list(b) for b in d.bit_options if b not in bits]}")
        if not args.out:
            raise UserError("--out: where to write the LUT is required")
        lut.save(args.out)
        ui.console.print(f"LUT: {len(lut.entries)} simulated entries -> {args.out}")
        return 0
    from bitnas.latency_luts.profiler import block_items, layer_items, profile
    from bitnas.passes.inc_ptq import resolve_reduce_range

    reduce_range = resolve_reduce_range({"auto": "auto", "on": True, "off": False}[args.reduce_range])
    use_blocks = [] if args.no_blocks else blocks
    if args.export_bundle:
        from bitnas.latency_luts.bundle import export_bundle

        items = layer_items(specs, bits) + block_items(use_blocks, bits, args.blocks_mixed)
        meas = {"warmup": args.warmup, "repeats": args.repeats, "rounds": args.rounds, "chunk": args.chunk,
                "statistic": args.statistic, "batch": 1}
        with tempfile.TemporaryDirectory(prefix="bitnas-bundle-nets-") as tmp:
            networks = []
            if args.calibrate:  # whole subnets measured with the layers, for the import's calibration
                from bitnas.latency_luts.validate import calibration_networks

                networks = calibration_networks(d.name, args.calibrate, Path(tmp), reduce_range,
                                                image_size=args.image_size, in_channels=args.in_channels)
            with _progress("export bundle", len(items)) as update:
                export_bundle(items, args.export_bundle, reduce_range, meas, d.name, update, networks)
        ui.console.print(f"bundle: {len(items)} models and {len(networks)} calibration subnets -> "
                         f"{args.export_bundle}")
        return 0
    if not args.out:
        raise UserError("--out: where to write the LUT is required")
    out = Path(args.out)
    ckpt = out.with_name(out.name + ".partial.json")
    n = len(specs) * len(bits)
    with _progress(f"profile {args.target}", n) as update:
        lut = profile(backend, specs, bits, args.target, reduce_range, args.warmup, args.repeats, args.rounds,
                      args.statistic, d.name, lambda p, dn, t: update(dn, p, t), blocks=use_blocks,
                      mixed_fraction=args.blocks_mixed, checkpoint=ckpt,
                      model_dir=args.model_dir, chunk=args.chunk)
    lut.measurement["input_shape"] = [1, args.in_channels, args.image_size, args.image_size]
    if args.calibrate:
        from bitnas.latency_luts.validate import calibrate

        lut.save(out)  # the measured table is kept even if calibration fails
        lut.calibration = calibrate(lut, backend, d.name, args.calibrate, image_size=args.image_size,
                                    in_channels=args.in_channels)
    if args.target == "tvm-llvm":
        lut.notes.append("TVM Relax imports INT8 QDQ models and lowers Q/DQ to float arithmetic: INT8 entries "
                         "time what TVM executes for a QDQ artifact (no INT8 kernels on the default schedule)")
    lut.save(out)
    ckpt.unlink(missing_ok=True)
    ui.console.print(f"LUT: {len(lut.entries)} layer and {len(lut.blocks)} block entries -> {out} "
                     f"(per-call overhead {lut.overhead.get('median_ms', 0) * 1e3:.1f} us)")
    return 0


def _profile_bundle(args: argparse.Namespace) -> int:
    from bitnas.latency_luts import bundle_runner
    from bitnas.latency_luts.bundle import RUNTIME_OF_TARGET, import_results

    if args.target not in RUNTIME_OF_TARGET:
        raise UserError(f"--bundle: bundles are measured for {', '.join(RUNTIME_OF_TARGET)}, not '{args.target}'")
    if not args.out:
        raise UserError("--out: where to write the LUT is required")
    results = args.results
    if results is None:
        results = Path(args.out).with_name(Path(args.out).name + ".results.json")
        try:
            bundle_runner.run_bundle(args.bundle, RUNTIME_OF_TARGET[args.target], results, args.threads)
        except bundle_runner.BundleError as exc:
            raise UserError(str(exc)) from None
    lut = import_results(args.bundle, results, args.target)
    lut.save(args.out)
    print(f"LUT: {len(lut.entries)} layer and {len(lut.blocks)} block entries -> {args.out}")
    return 0


def _cmd_lut(args: argparse.Namespace) -> int:
    if args.lut_cmd == "calibrate":
        return _cmd_calibrate(args)
    from bitnas.latency_luts.validate import validate

    report = validate(args.lut, args.space, args.samples, target=args.target, threads=args.threads,
                      repeats=args.repeats, rounds=args.rounds, seed=args.seed, force=args.force_lut,
                      plot=args.plot, workdir=args.workdir, image_size=args.image_size,
                      in_channels=args.in_channels)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k in ("target", "samples", "mape", "kendall_tau", "within_10pct", "repeatability"):
            print(f"{k}: {report[k]}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from bitnas.backends import get_backend
    from bitnas.latency_luts import LatencyTable
    from bitnas.latency_luts.validate import TARGET_BACKEND, calibrate

    lut = LatencyTable.load(args.lut)
    if lut.target not in TARGET_BACKEND:
        raise UserError(f"{args.lut}: target '{lut.target}' cannot be measured end to end")
    backend = get_backend(TARGET_BACKEND[lut.target], threads=int(lut.measurement.get("threads", 1)))
    lut.check_device(backend.fingerprint(), args.force_lut)
    from bitnas.latency_luts.lut import CALIBRATION_FEATURES, NETWORK_FEATURES

    features = tuple(f.strip() for f in args.features.split(",")) if args.features else CALIBRATION_FEATURES
    unknown = [f for f in features if f not in NETWORK_FEATURES]
    if unknown:
        raise UserError(f"--features: unknown feature(s) {unknown} (known: {', '.join(NETWORK_FEATURES)})")
    lut.calibration = calibrate(lut, backend, args.space, args.samples, seed=args.seed, repeats=args.repeats,
                                rounds=args.rounds, features=features)
    lut.save(args.out or args.lut)
    cal = lut.calibration
    print(f"calibration: coef {[round(c, 5) for c in cal['coef']]} over {cal['features']}, "
          f"leave-one-out error {100 * cal['residual_sd_rel']:.1f}% -> {args.out or args.lut}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("profile", help="measure a target's latency (and energy) LUT for a search space")
    p.add_argument("--target", required=True, help=f"one of {', '.join(TARGETS)}")
    p.add_argument("--space", default="mbv2-tiny", help="search space (bitnas space list)")
    p.add_argument("--out", help="LUT file to write (e.g. latency_luts/ort-cpu.json)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=60, help="timed runs per model")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="interleaved passes the repeats are split into")
    p.add_argument("--chunk", type=int, default=64, help="models measured (interleaved) per checkpoint")
    p.add_argument("--statistic", default="p10", choices=["median", "p10", "mean"])
    p.add_argument("--no-blocks", action="store_true", help="layers only (no fusion units)")
    p.add_argument("--blocks-mixed", type=float, default=0.15,
                   help="share of mixed-precision block policies measured whole (uniform ones always are)")
    p.add_argument("--reduce-range", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--model-dir", help="keep the layer/block ONNX models here (reused across targets)")
    p.add_argument("--preset", help="BitFusion preset (edge, cloud)")
    p.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="also measure N subnets end to end and fit the network-level correction (CPU targets; "
                        "with --export-bundle the subnets travel in the bundle and the import fits it)")
    p.add_argument("--export-bundle", metavar="B.zip", help="write the models + manifest + runner; measure nothing")
    p.add_argument("--bundle", metavar="B.zip", help="measure (or import) a bundle instead of building models")
    p.add_argument("--results", help="with --bundle: import these bundle_runner results instead of measuring")
    p.set_defaults(fn=_cmd_profile)

    lut = sub.add_parser("lut", help="latency tables")
    lsub = lut.add_subparsers(dest="lut_cmd", required=True)
    v = lsub.add_parser("validate", help="measure random subnets end to end and compare with the LUT")
    v.add_argument("--lut", required=True)
    v.add_argument("--space", default="mbv2-tiny")
    v.add_argument("--samples", type=int, default=50)
    v.add_argument("--target", help="target to measure on (default: the LUT's)")
    v.add_argument("--threads", type=int, default=None, help="default: the LUT's")
    v.add_argument("--repeats", type=int, default=100)
    v.add_argument("--rounds", type=int, default=10)
    v.add_argument("--seed", type=int, default=1)
    v.add_argument("--plot", help="scatter plot file (default next to the LUT)")
    v.add_argument("--workdir", help="keep the subnet ONNX models here")
    v.add_argument("--image-size", type=int, default=32)
    v.add_argument("--in-channels", type=int, default=1)
    v.add_argument("--force-lut", action="store_true", help="use a LUT measured on another device")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=_cmd_lut)
    c = lsub.add_parser("calibrate", help="fit a LUT's network-level correction on subnets measured end to end")
    c.add_argument("--lut", required=True)
    c.add_argument("--space", default="mbv2-tiny")
    c.add_argument("--samples", type=int, default=120)
    c.add_argument("--features", help="comma-separated calibration features (default: all of "
                                      "bitnas.latency_luts.lut.CALIBRATION_FEATURES)")
    c.add_argument("--seed", type=int, default=1000, help="differs from validate's default so they never overlap")
    c.add_argument("--repeats", type=int, default=100)
    c.add_argument("--rounds", type=int, default=10)
    c.add_argument("--out", help="write here instead of updating --lut")
    c.add_argument("--force-lut", action="store_true")
    c.set_defaults(fn=_cmd_lut)
