"""Profiling bundles: the layer/block ONNX models and a manifest, measured elsewhere, imported as a LUT.

Exporting needs the full bitnas (it quantizes the models); importing needs only numpy, like the runner.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bitnas.errors import LutError, UserError
from bitnas.io import atomic_write_bytes
from bitnas.latency_luts import bundle_runner
from bitnas.latency_luts.lut import VERSION as LUT_VERSION
from bitnas.latency_luts.lut import LatencyTable, finite_non_negative, table_from_results
from bitnas.space import LayerSpec


def bundle_runtime(target: str) -> str:
    """The runtime a bundle for ``target`` is measured with; a target without bundles is refused."""
    from bitnas.api import TARGETS

    targets = [n for n, t in TARGETS.items() if t.bundle]
    t = TARGETS.get(target, "--target") if target in TARGETS else None
    if t is None or not t.bundle:
        raise LutError(f"bundles are measured for {', '.join(targets)}, not '{target}'")
    return t.backend


def export_bundle(items: Sequence[Any], out: str | Path, reduce_range: bool, measurement: dict[str, Any],
                  space: str | None, progress=None, networks: Sequence[tuple[str, Sequence[LayerSpec], Path]] = ()
                  ) -> Path:
    """Write the models of ``items`` (profiler Items), the overhead model, the runner and a manifest.

    ``networks`` (candidate id, layers, ONNX path) are whole subnets measured alongside, from which the
    import fits the table's network-level calibration.
    """
    import tempfile

    import onnx

    from bitnas.latency_luts.profiler import overhead_model, write_unit_model

    buf = io.BytesIO()
    entries = []
    with tempfile.TemporaryDirectory(prefix="bitnas-bundle-") as tmp, \
            zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        folder = Path(tmp)
        written = set()
        for i, it in enumerate(items):
            path = write_unit_model(it.specs, folder, reduce_range)
            name = f"models/{path.name}"
            if name not in written:
                zf.write(path, name)
                written.add(name)
            s = it.specs[0]
            entries.append({"key": it.key, "kind": it.kind, "file": name, "input_shape": [1, s.cin, s.hw, s.hw],
                            "layers": [x.to_dict() for x in it.specs]})
            if progress:
                progress(i + 1, len(items))
        for cid, layers, path in networks:
            name = f"networks/{cid}.onnx"
            zf.write(path, name)
            s = layers[0]
            entries.append({"key": f"network:{cid}", "kind": "network", "file": name,
                            "input_shape": [1, s.cin, s.hw, s.hw], "layers": [x.to_dict() for x in layers]})
        zf.writestr("models/overhead.onnx", overhead_model().SerializeToString())
        zf.writestr("bundle_runner.py", Path(bundle_runner.__file__).read_text())
        manifest = {"format": bundle_runner.BUNDLE_FORMAT, "version": bundle_runner.VERSION, "space": space,
                    "reduce_range": reduce_range, "measurement": measurement, "overhead_file": "models/overhead.onnx",
                    "onnx_opset": 17, "onnx_version": onnx.__version__, "items": entries,
                    "run": "python bundle_runner.py THIS.zip --runtime ort|openvino --out results.json"}
        zf.writestr("manifest.json", json.dumps(manifest, indent=1))
    return atomic_write_bytes(out, buf.getvalue())


def _items(manifest: dict[str, Any], bundle: Path) -> list[tuple[str, str, tuple[LayerSpec, ...]]]:
    out = []
    for i, it in enumerate(manifest["items"]):
        try:
            specs = tuple(LayerSpec.from_dict(d) for d in it["layers"])
        except (KeyError, TypeError) as exc:
            raise LutError(f"{bundle}: manifest.json items[{i}] has malformed 'layers' ({exc})") from None
        out.append((it["key"], it["kind"], specs))
    return out


def import_results(bundle: str | Path, results: str | Path | dict[str, Any], target: str) -> LatencyTable:
    """The LatencyTable of a bundle measured by ``bundle_runner`` (results file or dict)."""
    bundle = Path(bundle)
    try:
        manifest = bundle_runner.read_manifest(bundle)
    except bundle_runner.BundleError as exc:
        raise LutError(str(exc)) from None
    source = "<results>"
    if not isinstance(results, dict):
        source = str(results)
        try:
            results = json.loads(Path(results).read_text())
        except FileNotFoundError:
            raise LutError(f"{source}: results file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LutError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(results, dict) or results.get("format") != bundle_runner.RESULTS_FORMAT:
        raise LutError(f"{source}: field 'format' is not '{bundle_runner.RESULTS_FORMAT}'")
    if results.get("bundle_sha256") != bundle_runner.sha256_file(bundle):
        raise LutError(f"{source}: field 'bundle_sha256' does not match {bundle} (results of another bundle)")
    want = bundle_runtime(target)
    if results.get("runtime") != want:
        raise LutError(f"{source}: field 'runtime' is {results.get('runtime')!r}; target '{target}' needs '{want}'")
    res = results.get("results")
    if not isinstance(res, dict):
        raise LutError(f"{source}: field 'results' missing or not an object")
    for key, r in res.items():
        for f in ("median_ms", "p10_ms", "mean_ms", "iqr_ms"):
            if not isinstance(r, dict) or not finite_non_negative(r.get(f)):
                raise LutError(f"{source}: results['{key}'] lacks a non-negative numeric '{f}'")
    items = _items(manifest, bundle)
    missing = [k for k, _, _ in items if k not in res]
    if missing:
        raise LutError(f"{source}: no measurement for '{missing[0]}' ({len(missing)} of {len(items)} missing)")
    meas = {**manifest.get("measurement", {}), **results.get("measurement", {}), "backend": want,
            "reduce_range": manifest.get("reduce_range"), "via": "bundle", "format_version": LUT_VERSION,
            "overhead_corrected": True}
    meas.setdefault("statistic", "median")
    table = table_from_results(target, results.get("fingerprint") or {}, meas, manifest.get("space"), items, res,
                               results.get("overheads") or [],
                               notes=[f"measured from bundle {bundle.name} by bundle_runner"])
    nets = [(k, specs) for k, kind, specs in items if kind == "network"]
    if nets:
        from bitnas.latency_luts.validate import fit_calibration

        stat = f"{table.statistic}_ms"
        try:
            fit = fit_calibration(table, [list(specs) for _, specs in nets], [res[k][stat] for k, _ in nets])
        except UserError as exc:
            raise LutError(f"{bundle}: its calibration subnets cannot calibrate the table: {exc}") from None
        table.calibration = {**fit, "ids": [k.split(":", 1)[1] for k, _ in nets], "via": "bundle"}
    return table
