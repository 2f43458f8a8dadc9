"""kill -9 in training, profiling, search or compile: the rerun resumes to what an uninterrupted run gives and
pays again at most what was in flight. Each test runs the ``bitnas`` CLI in a child process, SIGKILLs it once
the files it writes show it is midway, reruns the command and compares."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from bitnas.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PROFILE = ["--no-blocks", "--repeats", "5", "--rounds", "1", "--warmup", "1", "--chunk", "16", "--statistic", "median"]


@pytest.fixture(autouse=True)
def one_thread():
    """Children and this process compute with one thread alike (float sums in one order)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _bitnas(*args) -> subprocess.Popen:
    code = "import sys; from bitnas.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fail if it ends first."""
    end = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the child ended (code {proc.returncode}) before it could be killed midway: "
                        f"{proc.stderr.read().decode()[-2000:]}")
        assert time.time() < end, "the child made no progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _copy(src: Path, dst: Path, *names: str) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("project.yaml", *names):
        shutil.copy(src / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny project (mbv2-tiny at 16x16, 2 short epochs on a tenth of the digits) trained without
    interruption, in ``ref``."""
    ref = tmp_path_factory.mktemp("kill") / "ref"
    assert main(["init", str(ref), "--space", "mbv2-tiny", "--image-size", "16"]) == 0
    cfg = yaml.safe_load((ref / "project.yaml").read_text())
    cfg["data"]["val_fraction"] = 0.9
    cfg["train"].update({"epochs": 2, "n_random": 0})
    cfg["lut"].update({"warmup": 1, "repeats": 5, "rounds": 1})
    cfg["search"].update({"searcher": "nsga2", "budget": 6, "pop_size": 3, "calib_batches": 1})
    cfg["compile"]["passes"] = ["ExtractSubnet", {"RecalibrateBn": {"batches": 1}}, "ExportOnnx",
                                "AssignBitwidths", {"IncStaticPtq": {"calibration_batches": 1}},
                                {"Verify": {"backends": ["ort"], "repeats": 10}}, "Package"]
    (ref / "project.yaml").write_text(yaml.safe_dump(cfg))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--project", str(ref)]) == 0
    finally:
        torch.set_num_threads(n)
    return ref


def test_training_killed_after_an_epoch_resumes_to_the_same_weights(tiny, tmp_path):
    run = _copy(tiny, tmp_path / "run")
    proc = _bitnas("train", "--project", str(run))
    _kill_when(proc, lambda: (run / "supernet.pt").exists())  # written atomically after each epoch
    killed = torch.load(run / "supernet.pt", weights_only=True)
    assert killed["epoch"] == 1, "the kill came after training ended"
    assert main(["train", "--project", str(run)]) == 0
    got, want = (torch.load(p / "supernet.pt", weights_only=True) for p in (run, tiny))
    assert got["epoch"] == want["epoch"] == 2 and got["fingerprint"] == want["fingerprint"]
    assert got["model"].keys() == want["model"].keys()
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
    assert json.loads((run / "train.json").read_text()) == json.loads((tiny / "train.json").read_text())


def test_profiling_killed_midway_keeps_what_it_measured(tiny, tmp_path):
    run = _copy(tiny, tmp_path / "run")
    partial = run / "lut.json.partial.json"
    proc = _bitnas("profile", "--project", str(run), *PROFILE)
    _kill_when(proc, partial.exists)  # written atomically after each chunk of 16 layers
    measured = json.loads(partial.read_text())["results"]
    assert 0 < len(measured) and not (run / "lut.json").exists()
    assert main(["profile", "--project", str(run), *PROFILE]) == 0
    from bitnas.latency_luts import LatencyTable
    from bitnas.latency_luts.build import missing_entries
    from bitnas.project import Project

    lut = LatencyTable.load(run / "lut.json")
    assert missing_entries(lut, Project.load(run).build_supernet()) == []  # the whole space, as uninterrupted
    for key, m in measured.items():  # the chunks measured before the kill are kept, not measured again
        assert lut.entries[key]["median_ms"] == m["median_ms"], key
    assert not partial.exists()
    shutil.copy(run / "lut.json", tiny / "lut.json")  # the LUT the search and compile tests use


def _evaluations(folder: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(f"file:{folder / 'study.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return sorted(db.execute("SELECT id, objectives FROM evaluations").fetchall())
    finally:
        db.close()


def _rows(folder: Path) -> int:
    if not (folder / "study.sqlite").exists():
        return 0
    try:
        return len(_evaluations(folder))
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def test_search_killed_midway_resumes_to_the_same_study(tiny, tmp_path, capsys):
    if not (tiny / "lut.json").exists():
        pytest.skip("needs the LUT of test_profiling_killed_midway_keeps_what_it_measured")
    names = ("supernet.pt", "train.json", "lut.json")
    ref, run = _copy(tiny, tmp_path / "ref", *names), _copy(tiny, tmp_path / "run", *names)
    assert main(["search", "--project", str(ref)]) == 0
    cfg = yaml.safe_load((run / "project.yaml").read_text())
    cfg["search"]["executor"] = {"kind": "pool", "workers": 2}  # killed with its workers at work
    (run / "project.yaml").write_text(yaml.safe_dump(cfg))
    proc = _bitnas("search", "--project", str(run))
    workers: list[int] = []

    def midway() -> bool:
        workers[:] = _children(proc.pid) or workers
        return _rows(run) >= 2

    _kill_when(proc, midway)
    before = _evaluations(run)
    assert 2 <= len(before) < 6
    for pid in workers:  # the pool's workers end with their parent
        end = time.time() + 10
        while not _gone(pid):
            assert time.time() < end, f"pool worker {pid} outlived its killed parent"
            time.sleep(0.1)
    capsys.readouterr()
    assert main(["search", "--project", str(run), "--json"]) == 0  # the pool again: the claims are stale
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["history"]) == 6 - len(before)  # only what was not in the study is paid again
    after = _evaluations(run)
    assert set(before) <= set(after)
    assert after == _evaluations(ref)  # same candidates, same objectives
    shutil.copy(ref / "search.json", tiny / "search.json")
    shutil.copy(ref / "study.sqlite", tiny / "study.sqlite")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compile_killed_midway_resumes_to_the_same_artifact(tiny, tmp_path):
    if not (tiny / "search.json").exists():
        pytest.skip("needs the search of test_search_killed_midway_resumes_to_the_same_study")
    names = ("supernet.pt", "train.json", "lut.json", "search.json", "study.sqlite")
    ref, run = _copy(tiny, tmp_path / "ref", *names), _copy(tiny, tmp_path / "run", *names)
    assert main(["compile", "--project", str(ref)]) == 0
    cache = run / "cache" / "passes"
    proc = _bitnas("compile", "--project", str(run))
    _kill_when(proc, lambda: len(list(cache.glob("*/meta.json"))) >= 3)  # after ExportOnnx
    kept = {p.parent.name: p.stat().st_mtime_ns for p in cache.glob("*/meta.json")}
    assert not (run / "artifacts").exists() or not list((run / "artifacts").glob("*/manifest.json"))
    assert main(["compile", "--project", str(run)]) == 0
    assert {p.parent.name: p.stat().st_mtime_ns for p in cache.glob("*/meta.json") if p.parent.name in kept} == kept
    (want,), (got,) = list((ref / "artifacts").iterdir()), list((run / "artifacts").iterdir())
    assert got.name == want.name
    assert _sha(got / "model.onnx") == _sha(want / "model.onnx")
    m_got, m_want = (json.loads((a / "manifest.json").read_text()) for a in (got, want))
    assert m_got["candidate"] == m_want["candidate"]
    assert m_got["measured"]["ort"]["accuracy"] == m_want["measured"]["ort"]["accuracy"]
