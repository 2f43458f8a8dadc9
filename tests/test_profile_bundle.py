"""Edge bundles: export, measure with the self-contained runner (no torch, no bitnas), import as a LUT."""

import json
import subprocess
import sys
import zipfile

import pytest

from bitnas.cli import main
from bitnas.errors import LutError
from bitnas.fingerprint import device_fingerprint
from bitnas.latency_luts import bundle_runner
from bitnas.latency_luts.bundle import export_bundle, import_results
from bitnas.latency_luts.profiler import block_items, layer_items
from bitnas.space import LayerSpec

BLOCK = (LayerSpec("conv", 8, 24, 1, 1, 1, 8, "relu6", name="b0.expand"),
         LayerSpec("conv", 24, 24, 3, 1, 24, 8, "relu6", name="b0.dw"),
         LayerSpec("conv", 24, 8, 1, 1, 1, 8, "none", residual=True, name="b0.project"))  # one module scope
# blocks every import bitnas needs and torch, so the runner proves it lives on numpy + the runtime alone
GUARD = """
import sys, runpy
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'bitnas', 'onnx', 'sklearn', 'scipy', 'pydantic', 'yaml'):
            raise ImportError('blocked on the edge device: ' + name)
sys.meta_path.insert(0, _Block())
sys.argv = [RUNNER] + sys.argv[1:]
runpy.run_path(RUNNER, run_name='__main__')
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    items = layer_items(list(BLOCK), [(32, 32), (8, 8)]) + block_items([BLOCK], [(32, 32), (8, 8)], 0.0)
    path = tmp / "b.zip"
    export_bundle(items, path, False, {"warmup": 1, "repeats": 6, "rounds": 2, "chunk": 4, "statistic": "p10"},
                  "test")
    return path, items


def _run_guarded(bundle, tmp_path, runtime="ort"):
    runner = tmp_path / "bundle_runner.py"
    with zipfile.ZipFile(bundle) as zf:
        runner.write_bytes(zf.read("bundle_runner.py"))
    out = tmp_path / f"results_{runtime}.json"
    code = GUARD.replace("RUNNER", repr(str(runner)))
    proc = subprocess.run([sys.executable, "-c", code, str(bundle), "--runtime", runtime, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    return proc, out


@pytest.mark.parametrize("runtime,target", [("ort", "ort-cpu"), ("openvino", "openvino-cpu")])
def test_runner_without_torch_or_bitnas_round_trips_into_a_lut(bundle, tmp_path, runtime, target):
    path, items = bundle
    proc, out = _run_guarded(path, tmp_path, runtime)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert set(res["results"]) == {it.key for it in items}
    lut = import_results(path, out, target)
    assert set(lut.entries) == {it.key for it in items if it.kind == "layer"} and len(lut.blocks) == 2
    assert lut.statistic == "p10" and lut.predict(list(BLOCK))["blocks_measured"] == 1
    here = device_fingerprint(1)
    for k in ("cpu_model", "machine", "isa", "threads"):
        assert lut.fingerprint[k] == here[k]
    from bitnas.backends import get_backend

    lut.check_device(get_backend(runtime).fingerprint())


def test_bad_bundles_and_results_are_refused(bundle, tmp_path):
    path, _ = bundle
    proc, out = _run_guarded(path, tmp_path)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(LutError, match="runtime"):
        import_results(path, out, "openvino-cpu")
    doc = json.loads(out.read_text())
    key = next(iter(doc["results"]))
    doc["results"][key]["p10_ms"] = -1
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(LutError, match=r"r.json: results\['.*'\] lacks a non-negative numeric 'p10_ms'"):
        import_results(path, tmp_path / "r.json", "ort-cpu")
    for value in ("NaN", "true"):  # a device's NaN or a boolean is not a measurement
        doc = json.loads(out.read_text())
        doc["results"][key]["p10_ms"] = "@@"
        (tmp_path / "r.json").write_text(json.dumps(doc).replace('"@@"', value))
        with pytest.raises(LutError, match=r"lacks a non-negative numeric 'p10_ms'"):
            import_results(path, tmp_path / "r.json", "ort-cpu")
    doc = json.loads(out.read_text())
    del doc["results"][key]
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(LutError, match="no measurement for"):
        import_results(path, tmp_path / "r.json", "ort-cpu")
    other = tmp_path / "other.zip"
    other.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(LutError):
        import_results(other, out, "ort-cpu")
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK not really")
    with pytest.raises(LutError, match="junk.zip: not a zip bundle"):
        import_results(junk, out, "ort-cpu")
    with zipfile.ZipFile(path) as zf, zipfile.ZipFile(tmp_path / "nomodel.zip", "w") as zo:
        man = json.loads(zf.read("manifest.json"))
        man["items"][0]["file"] = "models/missing.onnx"
        zo.writestr("manifest.json", json.dumps(man))
    with pytest.raises(bundle_runner.BundleError, match="names missing file 'models/missing.onnx'"):
        bundle_runner.read_manifest(tmp_path / "nomodel.zip")


def test_cli_measures_a_bundle_here(bundle, tmp_path):
    path, items = bundle
    out = tmp_path / "lut.json"
    assert main(["profile", "--target", "ort-cpu", "--bundle", str(path), "--out", str(out)]) == 0
    assert main(["profile", "--target", "tvm-llvm", "--bundle", str(path), "--out", str(out)]) == 2
    from bitnas.latency_luts import LatencyTable

    assert LatencyTable.load(out).measurement["via"] == "bundle"


def test_cli_exports_a_bundle_of_the_whole_space(tmp_path):
    out = tmp_path / "space.zip"
    assert main(["profile", "--target", "ort-cpu", "--space", "mbv2-tiny", "--export-bundle", str(out),
                 "--no-blocks", "--repeats", "20"]) == 0
    man = bundle_runner.read_manifest(out)
    assert len(man["items"]) == 246 and man["space"] == "mbv2-tiny" and man["measurement"]["repeats"] == 20
    with zipfile.ZipFile(out) as zf:
        assert "bundle_runner.py" in zf.namelist()


def test_bundle_carries_calibration_subnets_and_the_import_fits_them(tmp_path):
    from bitnas.latency_luts import LatencyTable
    from bitnas.latency_luts.lut import CALIBRATION_FEATURES
    from bitnas.supernets import build_supernet

    n = len(CALIBRATION_FEATURES) + 4  # the fewest subnets a calibration takes
    out = tmp_path / "cal.zip"
    assert main(["profile", "--target", "ort-cpu", "--space", "mbv2-tiny", "--export-bundle", str(out),
                 "--no-blocks", "--repeats", "4", "--rounds", "2", "--warmup", "1", "--calibrate", str(n)]) == 0
    man = bundle_runner.read_manifest(out)
    nets = [it for it in man["items"] if it["kind"] == "network"]
    assert len(nets) == n and all(it["file"].startswith("networks/") for it in nets)
    lut_path = tmp_path / "lut.json"
    assert main(["profile", "--target", "ort-cpu", "--bundle", str(out), "--out", str(lut_path)]) == 0
    lut = LatencyTable.load(lut_path)
    assert len(lut.entries) == 246  # the subnets calibrate the table; they are not entries
    cal = lut.calibration
    assert cal["via"] == "bundle" and len(cal["ids"]) == n and cal["samples"] == n
    net = build_supernet("mbv2-tiny")
    for c in (net.space.largest((8, 8)), net.space.smallest((32, 32))):
        p = lut.predict(net.layers(c))
        assert p["latency_ms"] >= lut._overhead() > 0 and "latency_uncalibrated_ms" in p


def test_too_few_calibration_subnets_in_a_bundle_name_the_bundle(tmp_path):
    from bitnas.latency_luts.validate import calibration_networks
    from bitnas.supernets import build_supernet

    items = layer_items(list(BLOCK), [(32, 32)])
    nets = calibration_networks(build_supernet("mbv2-tiny").eval(), 2, tmp_path / "nets", reduce_range=False)
    path = tmp_path / "few.zip"
    export_bundle(items, path, False, {"warmup": 1, "repeats": 4, "rounds": 2, "chunk": 8, "statistic": "p10"},
                  "mbv2-tiny", networks=nets)
    doc = bundle_runner.run_bundle(path, "ort", tmp_path / "res.json")
    assert len(doc["results"]) == len(items) + 2
    with pytest.raises(LutError, match="few.zip: its calibration subnets cannot calibrate the table: "
                                       "calibration needs at least"):
        import_results(path, tmp_path / "res.json", "ort-cpu")
    assert (tmp_path / "res.json").exists()  # the measurements are kept
