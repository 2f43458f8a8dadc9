"""The project config and run folder: every cheap check runs before expensive work and names the key or
file at fault; objectives and constraints come from the config; a LUT, checkpoint or search result that
belongs to another problem is refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from bitnas.cli import main
from bitnas.config import validate_config
from bitnas.errors import ConfigError
from bitnas.project import Project, ProjectConfig


def _write(folder: Path, cfg: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "project.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("cfg, needle", [
    ({"serach": {}}, "unknown key 'serach'"),
    ({"target": "jetson-gpu"}, "unknown target 'jetson-gpu'"),
    ({"search": {"searcher": "annealing"}}, "unknown searcher 'annealing'"),
    ({"search": {"objectives": ["accuracy", "flops"]}}, "unknown objective 'flops'"),
    ({"search": {"constraints": {"accuracy": 0.9}}}, "only cheap objectives"),
    ({"search": {"objectives": ["accuracy", "energy_mj"]}}, "has no energy model"),
    ({"family": {"space": "mbv2-huge"}}, "unknown search space 'mbv2-huge'"),
    ({"family": {"name": "resnet", "space": "mbv2-tiny"}}, "family 'resnet' has no space 'mbv2-tiny'"),
    ({"compile": {"passes": ["ExtractSubnet", "Optimize"]}}, "compile.passes[1]: unknown pass 'Optimize'"),
    ({"compile": {"passes": [{"Verify": {"backends": ["tflite"]}}]}}, "'tflite' is not a runtime"),
    ({"seed": -1}, "key 'seed'"),
])
def test_bad_project_is_one_error_before_any_work(tmp_path, capsys, cfg, needle):
    path = _write(tmp_path / "run", cfg)
    t0 = time.perf_counter()
    assert main(["search", "--project", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(path) in err and err.count("\n") == 1
    assert time.perf_counter() - t0 < 20  # nothing was trained or measured
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["project.yaml"]


def test_space_bits_the_target_cannot_run_are_refused_naming_the_gene(tmp_path, capsys):
    path = _write(tmp_path / "run", {"family": {"space": "qfa-mbv3-tiny"}, "data": {"image_size": 16}})
    assert main(["train", "--project", str(path)]) == 2
    err = capsys.readouterr().err
    assert "space 'qfa-mbv3-tiny' gene 'stem'" in err or "gene '" in err
    assert "target 'ort-cpu' does not execute" in err


def test_targets_command_lists_the_table(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in ("ort-cpu", "openvino-cpu", "tvm-llvm", "bitfusion"):
        assert name in out
    assert "simulated" in out and "measured" in out


def test_profile_target_is_validated(tmp_path, capsys):
    assert main(["profile", "--target", "jetson-gpu", "--space", "mbv2-tiny", "--out", str(tmp_path / "l.json")]) == 2
    assert "unknown target 'jetson-gpu'" in capsys.readouterr().err


def _reuse(demo_run, tmp_path: Path, **search) -> Path:
    """A project that reuses the demo run's supernet and LUT (nothing retrained or re-measured)."""
    _, out = demo_run
    cfg = yaml.safe_load((out / "project.yaml").read_text())
    cfg["train"]["checkpoint"] = str(out / "supernet.pt")
    cfg["lut"]["path"] = str(out / "lut.json")
    cfg["search"].update({"searcher": "random", "budget": 6, "pop_size": 6, "calib_batches": 1, **search})
    return _write(tmp_path / "reuse", cfg)


def test_objectives_and_constraints_come_from_the_config(demo_run, tmp_path, capsys):
    lut = json.loads((demo_run[1] / "lut.json").read_text())
    assert lut["target"] == "ort-cpu"
    path = _reuse(demo_run, tmp_path, objectives=["accuracy", "bitops"], constraints={"size_bytes": 40000.0})
    assert main(["search", "--project", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n"):])
    assert summary["objectives"] == ["accuracy", "bitops"]
    search = json.loads((path.parent / "search.json").read_text())
    assert [o["name"] for o in search["objectives"]] == ["accuracy", "bitops"]
    for e in search["evaluations"]:
        assert set(e["objectives"]) == {"accuracy", "bitops", "size_bytes"}
        assert e["objectives"]["size_bytes"] <= 40000.0
    assert any(e["on_front"] for e in search["evaluations"])


def test_search_refuses_a_lut_of_another_target_space_or_device(demo_run, tmp_path, capsys):
    lut = json.loads((demo_run[1] / "lut.json").read_text())
    for field, value, needle in (("target", "openvino-cpu", "is for target 'openvino-cpu'"),
                                 ("space", "qfa-mbv3-tiny", "profiled for space 'qfa-mbv3-tiny'")):
        bad = tmp_path / f"bad_{field}.json"
        bad.write_text(json.dumps({**lut, field: value}))
        path = _reuse(demo_run, tmp_path / field)
        cfg = yaml.safe_load(path.read_text())
        cfg["lut"]["path"] = str(bad)
        path.write_text(yaml.safe_dump(cfg))
        assert main(["search", "--project", str(path)]) == 2
        assert needle in capsys.readouterr().err
    other = {**lut, "fingerprint": {**lut["fingerprint"], "cpu_model": "Some Other CPU"}}
    bad = tmp_path / "bad_device.json"
    bad.write_text(json.dumps(other))
    path = _reuse(demo_run, tmp_path / "device")
    cfg = yaml.safe_load(path.read_text())
    cfg["lut"]["path"] = str(bad)
    path.write_text(yaml.safe_dump(cfg))
    assert main(["search", "--project", str(path)]) == 2
    assert "measured on another device" in capsys.readouterr().err


def test_checkpoint_of_another_space_or_size_is_refused_naming_both(demo_run, tmp_path, capsys):
    path = _reuse(demo_run, tmp_path / "size")
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["image_size"] = 24
    cfg["lut"]["path"] = None
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--project", str(path)]) == 2
    err = capsys.readouterr().err
    assert "trained at 32x32" in err and "24x24" in err
    cfg.update({"family": {"name": "resnet", "space": "ofa-resnet-tiny"}})
    cfg["data"]["image_size"] = 32
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--project", str(path)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint of space 'mbv2-tiny'" in err and "'ofa-resnet-tiny'" in err


def test_compile_refuses_a_search_of_another_problem(demo_run, tmp_path, capsys):
    path = _reuse(demo_run, tmp_path / "p")
    assert main(["search", "--project", str(path)]) == 0
    capsys.readouterr()
    search = json.loads((path.parent / "search.json").read_text())
    search["problem"]["hash"] = "0" * 16
    (path.parent / "search.json").write_text(json.dumps(search))
    assert main(["compile", "--project", str(path)]) == 2
    assert "belongs to another problem" in capsys.readouterr().err


def test_config_keys_are_documented():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, ProjectConfig.__mro__[1]):
                walk(ann)
    walk(ProjectConfig)


def test_project_load_finds_the_file_in_a_folder(tmp_path):
    path = _write(tmp_path / "run", {"search": {"budget": 3}})
    assert Project.load(path.parent).cfg.search.budget == 3
    with pytest.raises(ConfigError, match="project file not found"):
        Project.load(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="unknown key"):
        validate_config(ProjectConfig, {"lut": {"thread": 2}}, "x")


def test_one_process_writes_a_run_folder_and_the_lock_dies_with_it(tmp_path, capsys):
    """A second process on a run folder is refused before any work, naming the process that has it; the
    lock does not outlive that process, even killed with SIGKILL."""
    import signal
    import subprocess
    import sys

    from bitnas.runlock import release_all

    run = tmp_path / "p"
    assert main(["init", str(run)]) == 0
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; from bitnas.runlock import hold; "
                              f"hold(sys.argv[1], 'bitnas search --project {run}'); print('held', flush=True); "
                              "time.sleep(120)", str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        capsys.readouterr()
        before = sorted(p.name for p in run.iterdir())
        assert main(["search", "--project", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"run folder in use by process {child.pid} (bitnas search --project {run}" in err
        assert sorted(p.name for p in run.iterdir()) == before  # nothing trained, profiled or written
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    project = Project.load(run)
    project.writer()  # free again: the kernel dropped the dead process's lock
    project.writer()  # re-entrant within a process
    release_all()


@pytest.mark.parametrize("section, key", [("lut", "path"), ("train", "checkpoint"), ("train", "init")])
def test_a_missing_file_the_config_names_is_found_before_any_training(tmp_path, capsys, section, key):
    path = _write(tmp_path / "p", {section: {key: "nowhere/file.bin"}})
    assert main(["search", "--project", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"key '{section}.{key}': {tmp_path / 'p' / 'nowhere' / 'file.bin'} not found" in err
    assert sorted(p.name for p in path.parent.iterdir()) == ["project.yaml"]  # nothing trained or written
