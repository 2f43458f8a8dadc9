"""A family that lives only in the test tree plugs in by ``module:attr`` and by entry point, and goes
through train, profile, search and compile with no edit to bitnas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bitnas.cli import main

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "tests.plugins.tinycnn:FAMILY"


def _project(tmp_path: Path, **extra) -> Path:
    cfg = {
        "seed": 0,
        "family": {"name": PLUGIN, "space": "tinycnn"},
        "train": {"epochs": 2, "n_random": 1},
        "lut": {"warmup": 2, "repeats": 6, "rounds": 2},
        "search": {"searcher": "random", "budget": 8, "pop_size": 4, "calib_batches": 1},
        "compile": {"passes": ["ExtractSubnet", {"RecalibrateBn": {"batches": 1}}, "ExportOnnx", "AssignBitwidths",
                                {"IncStaticPtq": {"calibration_batches": 1}},
                                {"Verify": {"backends": ["ort", "openvino"], "repeats": 20}}, "Package"]},
        **extra,
    }
    run = tmp_path / "run"
    run.mkdir()
    path = run / "project.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_plugin_family_by_reference_goes_through_search_and_compile(tmp_path, capsys):
    project = _project(tmp_path)
    assert main(["train", "--project", str(project)]) == 0
    assert main(["profile", "--project", str(project), "--no-blocks", "--repeats", "6", "--rounds", "2"]) == 0
    lut = json.loads((project.parent / "lut.json").read_text())
    assert lut["space"] == "tinycnn" and lut["target"] == "ort-cpu"
    assert main(["search", "--project", str(project), "--json"]) == 0
    summary = _last_json(capsys)
    assert summary["evaluations"] == 8 and summary["front_size"] >= 1
    assert main(["compile", "--project", str(project), "--pick", "knee"]) == 0
    arts = list((project.parent / "artifacts").iterdir())
    assert len(arts) == 1
    man = json.loads((arts[0] / "manifest.json").read_text())
    assert man["family"] == {"name": "tinycnn", "space": "tinycnn"}
    for b in ("ort", "openvino"):
        assert man["measured"][b]["top1_agreement_vs_fakequant"] >= 0.99
    assert main(["verify", str(arts[0])]) == 0
    assert main(["gate", "--baseline", str(arts[0] / "manifest.json"), "--current",
                 str(arts[0] / "manifest.json")]) == 0


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{\n"):])


def test_plugin_family_by_entry_point(tmp_path):
    """An installed package's entry point in group bitnas.families makes its family and space known."""
    dist = tmp_path / "site" / "tinycnn_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinycnn-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[bitnas.families]\ntinycnn = {PLUGIN}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    out = subprocess.run([sys.executable, "-m", "bitnas.cli", "space", "list"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("tinycnn "))
    assert "[family tinycnn]" in line
    # a project names the family by its entry-point name
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "bitnas.cli", "init", str(run), "--family", "tinycnn", "--space",
                          "tinycnn"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load((run / "project.yaml").read_text())
    assert cfg["family"] == {"name": "tinycnn", "space": "tinycnn"}


@pytest.mark.parametrize("ref, needle", [
    ("tests.plugins.nope:FAMILY", "cannot import module 'tests.plugins.nope'"),
    ("tests.plugins.tinycnn:NOPE", "has no attribute 'NOPE'"),
    ("tests.plugins.tinycnn:make_space", "is not a bitnas family"),
])
def test_bad_plugin_references_name_the_key(tmp_path, capsys, ref, needle):
    project = _project(tmp_path, family={"name": ref, "space": "tinycnn"})
    assert main(["search", "--project", str(project)]) == 2
    err = capsys.readouterr().err
    assert "family.name" in err and needle in err
