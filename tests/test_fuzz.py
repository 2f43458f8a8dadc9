"""Bounded, seeded fuzzing of what a user hands bitnas: project configs (mutated values, types, keys,
raw bytes) through the commands that read them, and every kind of file bitnas reads (LUT, checkpoint,
manifest, ONNX model, candidate file) corrupted. Each case ends in a clean exit code with one error line
(never a traceback or the crash code 70), touches nothing outside its run folder, and loses nothing that
was there before."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from bitnas.cli import main
from bitnas.errors import UserError
from bitnas.project import Project, ProjectConfig

SEED = 20261201
WEIRD = [None, -1, 0, -0.5, 1e308, float("nan"), float("inf"), True, "", "x", "../../outside", "/etc/passwd",
         "\u00e9\u0000", [], [1, "a"], {}, {"k": 1}, 2**63, "1e400"]


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (not under ``skip``): size and modification time."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and (skip is None or skip not in p.parents):
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def _leaves(d, path=()):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(d, list) and d:
        for i, v in enumerate(d):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def _set(d, path, value):
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


def _mutate(data, rng):
    """1-3 mutations of a config-like tree: a leaf set to a weird value, a key deleted or added, a section
    replaced by a scalar."""
    data = copy.deepcopy(data)
    for _ in range(int(rng.integers(1, 4))):
        leaves = list(_leaves(data))
        kind = rng.integers(4)
        path = leaves[rng.integers(len(leaves))] if leaves else ()
        if not path:
            continue
        if kind == 0:
            _set(data, path, WEIRD[rng.integers(len(WEIRD))])
        elif kind == 1 and isinstance(path[-1], str):
            parent = data
            for k in path[:-1]:
                parent = parent[k]
            parent.pop(path[-1], None)
        elif kind == 2:
            parent = data
            for k in path[:-1]:
                parent = parent[k]
            if isinstance(parent, dict):
                parent[f"extra_{rng.integers(100)}"] = WEIRD[rng.integers(len(WEIRD))]
        elif len(path) > 1 and isinstance(path[0], str):
            data[path[0]] = WEIRD[rng.integers(len(WEIRD))]
    return data


def _raw(rng, text: bytes) -> bytes:
    """Byte-level damage: a truncation, flipped bytes, non-UTF-8 or binary junk."""
    kind = rng.integers(4)
    if kind == 0:
        return text[: int(rng.integers(1, max(2, len(text))))]
    if kind == 1:
        b = bytearray(text)
        for i in rng.integers(0, len(b), 4):
            b[i] ^= 0xFF
        return bytes(b)
    if kind == 2:
        return b"\xff\xfe" + text
    return bytes(rng.integers(0, 256, 200, dtype=np.uint8))


def _clean_exit(capsys, argv, codes=(0, 1, 2, 3)) -> int:
    code = main(argv)
    err = capsys.readouterr().err
    assert code in codes, (argv, code, err[-2000:])
    assert "Traceback" not in err and "internal error" not in err, (argv, err[-2000:])
    if code:
        assert err.count("bitnas: error:") == 1, (argv, err[-2000:])
    return code


def _case_folder(tmp_path: Path, i: int) -> tuple[Path, dict[str, tuple[int, int]]]:
    run = tmp_path / f"case{i}"
    run.mkdir()
    (run / "thesis.txt").write_text("four years of work")  # the user's own file in the run folder
    return run, _snapshot(run)


def test_fuzzed_project_configs_end_in_one_clear_error(tmp_path, capsys):
    rng = np.random.default_rng(SEED)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not bitnas's")
    base = json.loads(ProjectConfig().model_dump_json())
    base["search"].update({"budget": 2, "pop_size": 2})
    loaded = refused = 0
    for i in range(90):
        run, before = _case_folder(tmp_path, i)
        around = _snapshot(tmp_path, skip=run)
        if i % 9 == 8:
            (run / "project.yaml").write_bytes(_raw(rng, yaml.safe_dump(base).encode()))
        else:
            (run / "project.yaml").write_text(yaml.safe_dump(_mutate(base, rng), allow_unicode=True))
        try:
            Project.load(run)
            loaded += 1
            commands = [["compile", "--project", str(run)]]  # a valid config: compile stops at "no search"
        except UserError:
            refused += 1
            commands = [[c, "--project", str(run)] for c in ("search", "train", "profile", "compile")]
        for argv in commands:
            _clean_exit(capsys, argv, codes=(2,))
        assert _snapshot(tmp_path, skip=run) == around, f"case {i} touched a file outside its run folder"
        after = _snapshot(run)
        assert all(after.get(k) == v for k, v in before.items()), f"case {i} changed the user's file"
    assert loaded >= 5 and refused >= 40, (loaded, refused)  # the fuzzer reaches both sides


@pytest.fixture(scope="module")
def good(demo_run):
    """The demo run's checkpoint, LUT and artifact, and a project reusing them (small search)."""
    summary, out = demo_run
    return out, Path(summary["artifact"])


def _project_reusing(folder: Path, demo: Path, **over) -> Path:
    cfg = yaml.safe_load((demo / "project.yaml").read_text())
    cfg["train"]["checkpoint"] = str(over.pop("checkpoint", demo / "supernet.pt"))
    cfg["lut"]["path"] = str(over.pop("lut", demo / "lut.json"))
    cfg["search"].update({"searcher": "random", "budget": 1, "pop_size": 1, "calib_batches": 1})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "project.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def _json_mutations(rng, obj, n):
    for _ in range(n):
        yield json.dumps(_mutate(obj, rng), allow_nan=True).encode()


def test_fuzzed_files_bitnas_reads_end_in_one_clear_error(good, tmp_path, capsys):
    demo, art = good
    rng = np.random.default_rng(SEED + 1)
    around_demo = _snapshot(demo)
    lut = json.loads((demo / "lut.json").read_text())
    manifest = json.loads((art / "manifest.json").read_text())
    cases = []
    # LUTs: JSON-level and byte-level damage, read by search
    for data in list(_json_mutations(rng, lut, 8)) + [_raw(rng, (demo / "lut.json").read_bytes()) for _ in range(3)]:
        cases.append(("lut", data))
    # checkpoints: truncated or flipped torch files, read (weights-only) by search
    ckpt = (demo / "supernet.pt").read_bytes()
    cases += [("checkpoint", _raw(rng, ckpt)) for _ in range(3)]
    # manifests (gate, verify), models (verify), candidate files (compile)
    cases += [("manifest", d) for d in _json_mutations(rng, manifest, 8)]
    cases += [("manifest", _raw(rng, (art / "manifest.json").read_bytes())) for _ in range(2)]
    cases += [("model", _raw(rng, (art / "model.onnx").read_bytes())) for _ in range(3)]
    cases += [("candidate", (art / "manifest.json").read_bytes()[: int(rng.integers(1, 400))]) for _ in range(2)]
    for i, (kind, data) in enumerate(cases):
        run, before = _case_folder(tmp_path, i)
        around = _snapshot(tmp_path, skip=run)
        bad = run / {"lut": "lut.bad.json", "checkpoint": "supernet.bad.pt", "manifest": "m.json",
                     "model": "m.onnx", "candidate": "c.json"}[kind]
        bad.write_bytes(data)
        if kind in ("lut", "checkpoint"):
            _project_reusing(run, demo, **{kind: bad})
            _clean_exit(capsys, ["search", "--project", str(run)])
        elif kind == "manifest":
            copy_art = run / "art"
            shutil.copytree(art, copy_art)
            (copy_art / "manifest.json").write_bytes(data)
            _clean_exit(capsys, ["gate", "--baseline", str(copy_art / "manifest.json"), "--current",
                                 str(art / "manifest.json")])
            _clean_exit(capsys, ["verify", str(copy_art), "--backend", "ort"])
        elif kind == "model":
            copy_art = run / "art"
            shutil.copytree(art, copy_art)
            (copy_art / "model.onnx").write_bytes(data)
            assert _clean_exit(capsys, ["verify", str(copy_art), "--backend", "ort"]) != 0
            assert _clean_exit(capsys, ["run", str(copy_art), "--backend", "ort", "--input", str(bad)]) != 0
        else:
            _project_reusing(run, demo)
            assert _clean_exit(capsys, ["compile", "--project", str(run), "--candidate", str(bad)]) == 2
        assert _snapshot(tmp_path, skip=run) == around, f"case {i} ({kind}) touched a file outside its run folder"
        after = _snapshot(run)
        assert all(after.get(k) == v for k, v in before.items()), f"case {i} ({kind}) changed the user's file"
    assert _snapshot(demo) == around_demo  # the inputs read, never written
