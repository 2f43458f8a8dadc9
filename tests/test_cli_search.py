"""``bitnas search``: config errors, a real short run on the demo problem, its study, table, plot and resume."""

import json
import sqlite3

import pytest
import yaml

from bitnas.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, trained):
    """A trained supernet checkpoint and a latency table (as data) in one folder: (None, folder)."""
    import torch

    from bitnas.latency_luts import LatencyTable

    out = tmp_path_factory.mktemp("search_inputs")
    torch.save({"model": trained.state_dict(), "fingerprint": "trained-fixture"}, out / "supernet.pt")
    entries = {}
    for spec in trained.all_layer_specs():
        for b in trained.d.bit_options:
            sb = spec.with_bits(b)
            entries[sb.key] = {"median_ms": 1e-6 * sb.macs * (0.5 if b == (8, 8) else 1.0) + 0.002,
                               "spec": sb.to_dict()}
    LatencyTable(target="ort-cpu", fingerprint={}, measurement={"statistic": "median"}, entries=entries,
                 overhead={"median_ms": 0.002}, space=trained.space.name).save(out / "lut.json")
    return None, out


def _write(tmp_path, cfg, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("cfg, message", [
    ({"searcher": "nsga2", "budgett": 3}, "unknown key 'budgett'"),
    ({"searcher": "annealing"}, "key 'searcher': Value error, unknown searcher 'annealing'"),
    ({"budget": 0}, "key 'budget'"),
    ({"constraints": {"accuracy": 0.9}}, "key 'constraints'"),
])
def test_bad_config_gets_one_clear_error(tmp_path, capsys, cfg, message):
    path = _write(tmp_path, cfg)
    code, _, err = _run(capsys, "search", "--config", str(path), "--out", str(tmp_path / "o"))
    assert code == 2
    assert err.count("error:") == 1 and str(path) in err and message in err


def test_missing_checkpoint_and_bad_options_name_the_key(tmp_path, capsys, demo_run):
    _, demo = demo_run
    path = _write(tmp_path, {"checkpoint": str(tmp_path / "none.pt"), "lut_path": str(demo / "lut.json")})
    code, _, err = _run(capsys, "search", "--config", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and "checkpoint" in err and "none.pt" in err
    path = _write(tmp_path, {"checkpoint": str(demo / "supernet.pt"), "lut_path": str(demo / "lut.json"),
                             "searcher": "linas", "options": {"population": 3}}, "d.yaml")
    code, _, err = _run(capsys, "search", "--config", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and "key 'options'" in err and "population" in err


def test_search_writes_study_front_and_plot_then_resumes(tmp_path, capsys, demo_run):
    _, demo = demo_run
    base = {"searcher": "random", "budget": 6, "seed": 1, "options": {"pop_size": 3},
            "checkpoint": str(demo / "supernet.pt"), "lut_path": str(demo / "lut.json"), "calib_batches": 1}
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "search", "--config", str(_write(tmp_path, base)), "--out", str(out), "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["evaluations"] == 6 and 1 <= summary["front_size"] <= 6
    assert 0.0 < summary["hypervolume"] <= 1.0
    assert "hv" in err and "Pareto front" in err
    assert (out / "front.png").stat().st_size > 1000
    rows = sqlite3.connect(out / "study.sqlite").execute(
        "SELECT id, encoding, objectives, wall_time_s FROM evaluations").fetchall()
    assert len(rows) == 6
    for cid, enc, obj, wall in rows:
        assert len(cid) == 16 and len(json.loads(enc)) > 10 and wall > 0
        assert set(json.loads(obj)) == {"accuracy", "latency_ms", "size_bytes"}
    # a larger budget on the same study resumes: the first six are not paid again
    more = dict(base, budget=9, constraints={"latency_ms": 1e9})
    code, stdout, err = _run(capsys, "search", "--config", str(_write(tmp_path, more, "m.yaml")), "--out",
                             str(out), "--json")
    assert code == 0, err
    assert "resuming study" in err and json.loads(stdout)["evaluations"] == 9


def test_constraints_hold_on_the_demo_problem(tmp_path, capsys, demo_run):
    _, demo = demo_run
    from bitnas.cli_search import SearchRunConfig, build_problem

    cfg = SearchRunConfig(checkpoint=str(demo / "supernet.pt"), lut_path=str(demo / "lut.json"), calib_batches=1)
    problem = build_problem(cfg, tmp_path / "p")
    space = problem.supernet.space
    limit = (problem.cheap(space.smallest())["latency_ms"] + problem.cheap(space.largest())["latency_ms"]) / 2
    conf = {"searcher": "nsga2", "budget": 5, "options": {"pop_size": 4}, "constraints": {"latency_ms": limit},
            "checkpoint": str(demo / "supernet.pt"), "lut_path": str(demo / "lut.json"), "calib_batches": 1}
    code, stdout, err = _run(capsys, "search", "--config", str(_write(tmp_path, conf)), "--out",
                             str(tmp_path / "c"), "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["constraint_violations"] == [] and all(f["latency_ms"] <= limit for f in summary["front"])
