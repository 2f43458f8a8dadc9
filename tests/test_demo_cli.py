"""End to end: the quick demo run, its outputs, and ``bitnas run``/``verify`` on its artifact."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bitnas.cli import main
from bitnas.io import sha256_file
from tests.conftest import assert_same_top1


def _artifact(summary) -> Path:
    return Path(summary["artifact"])


def test_demo_leaves_artifact_search_and_lut(demo_run):
    summary, out = demo_run
    art = _artifact(summary)
    assert art.resolve() == (out / "artifacts" / summary["candidate"]).resolve()
    for name in ("model.onnx", "manifest.json"):
        assert (art / name).is_file(), name
    for name in ("project.yaml", "search.json", "lut.json", "front.png", "supernet.pt", "train.json", "study.sqlite"):
        assert (out / name).is_file(), name
    search = json.loads((out / "search.json").read_text())
    evals = search["evaluations"]
    assert len(evals) == 16 and len({e["id"] for e in evals}) == 16
    for e in evals:
        assert set(e["objectives"]) == {"accuracy", "latency_ms", "size_bytes"}
    assert any(e["on_front"] for e in evals)
    lut = json.loads((out / "lut.json").read_text())
    assert lut["format"] == "bitnas-lut" and lut["fingerprint"]["isa"] is not None


def test_manifest_of_the_demo(demo_run):
    summary, out = demo_run
    man = json.loads((_artifact(summary) / "manifest.json").read_text())
    search = json.loads((out / "search.json").read_text())
    chosen = next(e for e in search["evaluations"] if e["id"] == man["candidate"]["id"])
    assert chosen["on_front"]
    assert man["predicted"]["latency_ms"] == pytest.approx(chosen["objectives"]["latency_ms"])
    assert man["predicted"]["size_bytes"] == chosen["objectives"]["size_bytes"]
    assert man["target"]["name"] == "ort-cpu" and "isa" in man["target"]["fingerprint"]
    assert man["lut"]["fingerprint"]["cpu_model"] == man["target"]["fingerprint"]["cpu_model"]
    m = man["measured"]
    for b in ("ort", "openvino", "tvm"):
        for k in ("latency_ms", "latency_ms_fp32", "accuracy", "accuracy_fp32", "latency_ratio_to_fp32"):
            assert m[b][k] > 0
        # a policy with INT8 layers loses little accuracy against the same subnet in float
        assert m[b]["accuracy"] >= m[b]["accuracy_fp32"] - 0.05
    assert man["files"]["model.onnx"]["sha256"] == sha256_file(_artifact(summary) / "model.onnx")


def _run(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_gives_the_same_top1_on_every_runtime(demo_run, digits, tmp_path, capsys):
    """Every runtime runs the artifact to the same logits, up to its own rounding: a top-1 may differ only
    where ONNX Runtime's two best classes are closer than twice the largest logit difference measured."""
    summary, _ = demo_run
    x = tmp_path / "val.npy"
    np.save(x, digits.x_val)
    logits = {}
    for backend in ("ort", "openvino", "tvm"):
        code, stdout, err = _run(capsys, "run", str(_artifact(summary)), "--backend", backend, "--input", str(x),
                                 "--logits")
        assert code == 0, err
        result = json.loads(stdout)
        assert result["shape"] == [len(digits.x_val), 10]
        logits[backend] = np.array(result["logits"])
        assert np.array_equal(np.array(result["top1"]), logits[backend].argmax(1))
    for other in ("openvino", "tvm"):
        assert_same_top1(logits["ort"], logits[other], other)
    assert (logits["ort"].argmax(1) == digits.y_val).mean() > 0.5


def test_run_one_image_prints_logits(demo_run, digits, tmp_path, capsys):
    summary, _ = demo_run
    x = tmp_path / "one.npy"
    np.save(x, digits.x_val[0])
    code, stdout, _ = _run(capsys, "run", str(_artifact(summary)), "--input", str(x))
    result = json.loads(stdout)
    assert code == 0 and len(result["logits"][0]) == 10 and result["top1"][0] == int(np.argmax(result["logits"][0]))


def test_run_errors_name_what_is_wrong(demo_run, digits, tmp_path, capsys):
    summary, _ = demo_run
    art = tmp_path / "art"
    shutil.copytree(_artifact(summary), art)
    x = tmp_path / "x.npy"
    np.save(x, digits.x_val[:2])

    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 3, 32, 32), np.float32))
    code, _, err = _run(capsys, "run", str(art), "--input", str(wrong))
    assert code == 2 and "wrong.npy: shape (2, 3, 32, 32) does not fit" in err

    code, _, err = _run(capsys, "run", str(art), "--input", str(tmp_path / "none.npy"))
    assert code == 2 and "none.npy: input file not found" in err

    code, _, err = _run(capsys, "run", str(art), "--backend", "ort", "--input", str(x))
    assert code == 0

    # an ONNX file that is not ONNX (checksum updated so that the parse is what fails)
    (art / "model.onnx").write_bytes(b"\x08\x07garbage that is not a model" * 20)
    man = json.loads((art / "manifest.json").read_text())
    man["files"]["model.onnx"]["sha256"] = sha256_file(art / "model.onnx")
    (art / "manifest.json").write_text(json.dumps(man))
    code, _, err = _run(capsys, "run", str(art), "--input", str(x))
    assert code == 2 and "model.onnx: not an ONNX model" in err

    (art / "model.onnx").unlink()
    code, _, err = _run(capsys, "run", str(art), "--input", str(x))
    assert code == 2 and "model.onnx: listed in the manifest but missing" in err
    code, _, err = _run(capsys, "verify", str(art))
    assert code == 2 and "missing" in err


def test_verify_command(demo_run, capsys):
    summary, _ = demo_run
    code, stdout, _ = _run(capsys, "verify", str(_artifact(summary)))
    assert code == 0 and "checksums match" in stdout


def test_rerun_resumes_everything_without_new_evaluations(demo_run, tmp_path):
    """A second run of the project in the same folder reuses the checkpoint, the LUT and every evaluation."""
    from tests.conftest import quick_project

    summary, out = demo_run
    before = json.loads((out / "search.json").read_text())["evaluations"]
    lut_sha, ckpt_sha = sha256_file(out / "lut.json"), sha256_file(out / "supernet.pt")
    again = quick_project(out).run_all()
    after = json.loads((out / "search.json").read_text())["evaluations"]
    assert sha256_file(out / "lut.json") == lut_sha and sha256_file(out / "supernet.pt") == ckpt_sha
    assert [(e["id"], e["wall_time_s"]) for e in after] == [(e["id"], e["wall_time_s"]) for e in before]
    assert again["candidate"] == summary["candidate"] and again["artifact"] == summary["artifact"]
