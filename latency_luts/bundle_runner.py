"""Measure a bitnas profiling bundle on a device that has only numpy and the runtime (no torch, no bitnas).

Self-contained on purpose: it imports the standard library, numpy, and onnxruntime or openvino. Usage:
``python bundle_runner.py BUNDLE.zip --runtime ort|openvino --out RESULTS.json [--threads N]``.
Finished chunks are checkpointed next to ``--out`` so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

BUNDLE_FORMAT = "bitnas-bundle"
RESULTS_FORMAT = "bitnas-bundle-results"


def _openvino():
    """``import openvino`` with its usage telemetry off (as bitnas.backends.openvino.import_openvino; this
    runner imports nothing of bitnas): OpenVINO's own switch, ``CI=true`` while it initializes, for the
    import alone."""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    saved = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        import openvino
    finally:
        if saved is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = saved
    return openvino
VERSION = 1
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve",
)
RUNTIMES = {"ort": "onnxruntime", "openvino": "openvino"}


class BundleError(Exception):
    """The bundle or its results file is malformed; the message names the file and field."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fingerprint(runtime: str, threads: int) -> dict:
    """The fields of bitnas's device fingerprint that a LUT is checked against, plus the runtime."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    isa = sorted(f for f in ISA_FLAGS if f in flags)
    try:
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        governor = None
    if runtime == "ort":
        import onnxruntime as ort

        version = ort.__version__
    else:
        ov = _openvino()

        version = ov.get_version()
    return {"cpu_model": model, "machine": platform.machine(), "isa": isa,
            "vnni": bool(set(isa) & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}),
            "logical_cores": os.cpu_count(), "threads": threads, "governor": governor, "os": platform.system(),
            "python": platform.python_version(), "backend": runtime, "runtime_version": version,
            "libraries": {RUNTIMES[runtime]: version, "numpy": np.__version__}, "measured_by": "bundle_runner"}


def read_manifest(bundle: Path) -> dict:
    """The bundle's manifest, checked: every item names a model file present in the zip."""
    try:
        zf = zipfile.ZipFile(bundle)
    except FileNotFoundError:
        raise BundleError(f"{bundle}: bundle not found") from None
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{bundle}: not a zip bundle ({exc})") from None
    with zf:
        names = set(zf.namelist())
        if "manifest.json" not in names:
            raise BundleError(f"{bundle}: no manifest.json")
        try:
            man = json.loads(zf.read("manifest.json"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{bundle}: manifest.json is not valid JSON ({exc})") from None
    if not isinstance(man, dict) or man.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{bundle}: manifest.json field 'format' is not '{BUNDLE_FORMAT}'")
    if man.get("version") != VERSION:
        raise BundleError(f"{bundle}: manifest.json field 'version' is {man.get('version')!r}, expected {VERSION}")
    items = man.get("items")
    if not isinstance(items, list) or not items:
        raise BundleError(f"{bundle}: manifest.json field 'items' must be a non-empty list")
    for i, it in enumerate(items):
        if not isinstance(it, dict) or not all(k in it for k in ("key", "kind", "file", "input_shape")):
            raise BundleError(f"{bundle}: manifest.json items[{i}] needs 'key', 'kind', 'file', 'input_shape'")
        if it["file"] not in names or it["file"].startswith("/") or ".." in Path(it["file"]).parts:
            raise BundleError(f"{bundle}: manifest.json items[{i}] ('{it['key']}') names missing file '{it['file']}'")
    if man.get("overhead_file") not in names:
        raise BundleError(f"{bundle}: manifest.json field 'overhead_file' names a missing file")
    return man


def _timer(runtime: str, path: Path, threads: int, x: np.ndarray):
    """A zero-argument callable running ``path`` on ``x``, timed as bitnas's backends time it."""
    if runtime == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        return lambda: sess.run(None, feed)
    ov = _openvino()

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    x = np.ascontiguousarray(x)
    request.set_input_tensor(ov.Tensor(x, shared_memory=True))  # bound once; x stays referenced below
    return lambda keep=x: request.infer()


def _summary(samples_s: np.ndarray) -> dict:
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    q10, q25, q50, q75 = np.percentile(ms, [10, 25, 50, 75])
    return {"median_ms": float(q50), "p10_ms": float(q10), "mean_ms": float(ms.mean()),
            "iqr_ms": float(q75 - q25), "n": int(ms.size)}


def _interleaved(runners: dict, warmup: int, repeats: int, rounds: int) -> dict:
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    names = list(runners)
    samples = {n: [] for n in names}
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    for r, count in enumerate(per_round):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn, buf = runners[name], samples[name]
            for _ in range(count):
                t0 = time.perf_counter()
                fn()
                buf.append(time.perf_counter() - t0)
    return {n: _summary(np.array(v)) for n, v in samples.items()}


def run_bundle(bundle: str | Path, runtime: str, out: str | Path, threads: int = 1, progress=None) -> dict:
    """Measure every model of ``bundle`` with ``runtime``; write and return the results (resumable)."""
    bundle, out = Path(bundle), Path(out)
    if runtime not in RUNTIMES:
        raise BundleError(f"unknown runtime '{runtime}' (known: {', '.join(RUNTIMES)})")
    man = read_manifest(bundle)
    meas = man.get("measurement", {})
    warmup, repeats = int(meas.get("warmup", 10)), int(meas.get("repeats", 60))
    rounds, chunk = int(meas.get("rounds", 3)), int(meas.get("chunk", 64))
    digest = sha256_file(bundle)
    partial = out.with_name(out.name + ".partial")
    results, overheads = {}, []
    if partial.exists():
        try:
            state = json.loads(partial.read_text())
            if state.get("bundle_sha256") == digest and state.get("runtime") == runtime and state.get("threads") == threads:
                results, overheads = state["results"], state["overheads"]
        except (OSError, json.JSONDecodeError, KeyError):
            results, overheads = {}, []
    todo = [it for it in man["items"] if it["key"] not in results]
    with tempfile.TemporaryDirectory(prefix="bitnas-bundle-") as tmp, zipfile.ZipFile(bundle) as zf:
        zf.extractall(tmp, [it["file"] for it in man["items"]] + [man["overhead_file"]])
        root = Path(tmp)
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            runners = {"__overhead__": _timer(runtime, root / man["overhead_file"], threads,
                                              np.zeros((1, 1), np.float32))}
            for i, it in enumerate(part):
                x = np.random.default_rng(start + i).normal(0, 1, it["input_shape"]).astype(np.float32)
                runners[it["key"]] = _timer(runtime, root / it["file"], threads, x)
            timing = _interleaved(runners, warmup, repeats, rounds)
            ov = timing.pop("__overhead__")
            overheads.append(ov)
            for it in part:
                results[it["key"]] = {"kind": it["kind"], **timing[it["key"]],
                                      "overhead_median_ms": ov["median_ms"], "overhead_p10_ms": ov["p10_ms"]}
            write_json_atomic(partial, {"bundle_sha256": digest, "runtime": runtime, "threads": threads,
                                        "results": results, "overheads": overheads})
            if progress:
                progress(len(results), len(man["items"]))
    doc = {"format": RESULTS_FORMAT, "version": VERSION, "bundle_sha256": digest, "runtime": runtime,
           "fingerprint": fingerprint(runtime, threads),
           "measurement": {"warmup": warmup, "repeats": repeats, "rounds": rounds, "chunk": chunk,
                           "threads": threads, "interleaved": True},
           "results": results, "overheads": overheads}
    write_json_atomic(out, doc)
    partial.unlink(missing_ok=True)
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Measure a bitnas profiling bundle (numpy + runtime only).")
    p.add_argument("bundle")
    p.add_argument("--runtime", choices=sorted(RUNTIMES), required=True)
    p.add_argument("--out", required=True, help="results JSON to write")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    try:
        doc = run_bundle(args.bundle, args.runtime, args.out, args.threads,
                         progress=lambda d, t: print(f"measured {d}/{t}", file=sys.stderr))
    except BundleError as exc:
        print(f"bundle_runner: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(doc['results'])} models measured -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
