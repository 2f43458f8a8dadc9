"""``bitnas search --project``: config errors, a real short run on a project's problem, its study, table, plot
and resume."""

import json
import sqlite3

import numpy as np
import pytest
import yaml

from bitnas.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, trained):
    """A trained supernet checkpoint and a latency table of this device (as data) in one folder: (None, folder)."""
    import torch

    from bitnas.api import TARGETS
    from bitnas.latency_luts import LatencyTable

    out = tmp_path_factory.mktemp("search_inputs")
    torch.save({"model": trained.state_dict(), "fingerprint": "trained-fixture"}, out / "supernet.pt")
    entries = {}
    for spec in trained.all_layer_specs():
        for b in trained.d.bit_options:
            sb = spec.with_bits(b)
            entries[sb.key] = {"median_ms": 1e-6 * sb.macs * (0.5 if b == (8, 8) else 1.0) + 0.002,
                               "spec": sb.to_dict()}
    here = TARGETS.get("ort-cpu").make_backend(threads=1).fingerprint()
    LatencyTable(target="ort-cpu", fingerprint=here, measurement={"statistic": "median", "threads": 1},
                 entries=entries, overhead={"median_ms": 0.002}, space=trained.space.name).save(out / "lut.json")
    return None, out


def _project(folder, demo=None, **search):
    """Write ``folder/project.yaml``: the search section ``search``, the checkpoint and LUT of ``demo``."""
    cfg = {"seed": search.pop("seed", 0), "search": search}
    if demo is not None:
        cfg["train"] = {"checkpoint": str(demo / "supernet.pt")}
        cfg["lut"] = {"path": str(demo / "lut.json")}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "project.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("search, message", [
    ({"searcher": "nsga2", "budgett": 3}, "unknown key 'search.budgett'"),
    ({"searcher": "annealing"}, "search.searcher: unknown searcher 'annealing'"),
    ({"budget": 0}, "key 'search.budget'"),
    ({"constraints": {"accuracy": 0.9}}, "key 'search.constraints.accuracy'"),
    ({"objectives": ["accuracy", "speed"]}, "search.objectives[1]: unknown objective 'speed'"),
    # searcher options are typed against the searcher's own arguments, before any training
    ({"searcher": "evolution", "options": {"inner_pop": -3}}, "key 'search.options.inner_pop': Input should be "
                                                               "greater than or equal to 1"),
    ({"searcher": "evolution", "options": {"parent_ratio": 1.5}}, "key 'search.options.parent_ratio'"),
    ({"searcher": "evolution", "options": {"mutate_prob": float("nan")}}, "key 'search.options.mutate_prob'"),
    ({"searcher": "linas", "options": {"inner_gens": "many"}}, "key 'search.options.inner_gens'"),
    ({"searcher": "bo", "options": {"acquisition": "ei"}}, "key 'search.options.acquisition'"),
    ({"searcher": "nsga2", "options": {"mutation": 0.1}}, "unknown key 'search.options.mutation'"),
])
def test_bad_config_gets_one_clear_error(tmp_path, capsys, search, message):
    path = _project(tmp_path / "o", **search)
    code, _, err = _run(capsys, "search", "--project", str(path))
    assert code == 2
    assert err.count("error:") == 1 and str(path) in err and message in err
    assert sorted(p.name for p in path.parent.iterdir()) == ["project.yaml"]  # nothing trained or written


def test_missing_checkpoint_and_bad_options_name_the_key(tmp_path, capsys, demo_run):
    _, demo = demo_run
    path = _project(tmp_path / "a", demo)
    cfg = yaml.safe_load(path.read_text())
    cfg["train"]["checkpoint"] = str(tmp_path / "none.pt")
    path.write_text(yaml.safe_dump(cfg))
    code, _, err = _run(capsys, "search", "--project", str(path))
    assert code == 2 and "checkpoint" in err and "none.pt" in err
    path = _project(tmp_path / "b", demo, searcher="linas", options={"population": 3}, calib_batches=1)
    code, _, err = _run(capsys, "search", "--project", str(path.parent))
    assert code == 2 and "unknown key 'search.options.population'" in err and "inner_pop" in err


def test_search_writes_study_front_and_plot_then_resumes(tmp_path, capsys, demo_run):
    _, demo = demo_run
    base = {"searcher": "random", "budget": 6, "seed": 1, "pop_size": 3, "calib_batches": 1}
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "search", "--project", str(_project(out, demo, **base)), "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["evaluations"] == 6 and 1 <= summary["front_size"] <= 6
    assert 0.0 < summary["hypervolume"] <= 1.0
    assert "hv" in err and "Pareto front" in err
    assert (out / "front.png").stat().st_size > 1000
    assert len(json.loads((out / "search.json").read_text())["evaluations"]) == 6
    rows = sqlite3.connect(out / "study.sqlite").execute(
        "SELECT id, encoding, objectives, wall_time_s FROM evaluations").fetchall()
    assert len(rows) == 6
    for cid, enc, obj, wall in rows:
        assert len(cid) == 16 and len(json.loads(enc)) > 10 and wall > 0
        assert set(json.loads(obj)) == {"accuracy", "latency_ms", "size_bytes"}
    # a larger budget on the same study resumes: the first six are not paid again
    more = dict(base, budget=9, constraints={"latency_ms": 1e9})
    code, stdout, err = _run(capsys, "search", "--project", str(_project(out, demo, **more)), "--json")
    assert code == 0, err
    assert "resuming study" in err and json.loads(stdout)["evaluations"] == 9


def test_constraints_hold_on_the_project_problem(tmp_path, capsys, demo_run):
    _, demo = demo_run
    from bitnas.project import Project

    conf = {"searcher": "nsga2", "budget": 5, "pop_size": 4, "calib_batches": 1}
    problem = Project.load(_project(tmp_path / "c", demo, **conf)).problem()
    space = problem.supernet.space
    # the study is bound to the data's content, not only its name (two image folders may share a name)
    assert problem.problem["data_digest"] == problem.data.digest()
    rows = np.array([space.encode(space.sample(np.random.default_rng(i))) for i in range(50)])
    batch = problem.cheap_batch(rows)
    for r, x in enumerate(rows):  # the batch path the searchers use gives what one candidate at a time gives
        one = problem.cheap(space.decode(x))
        assert all(abs(batch[k][r] - v) <= 1e-9 * abs(v) for k, v in one.items())
    limit = (problem.cheap(space.smallest())["latency_ms"] + problem.cheap(space.largest())["latency_ms"]) / 2
    path = _project(tmp_path / "c", demo, **conf, constraints={"latency_ms": limit})
    code, stdout, err = _run(capsys, "search", "--project", str(path), "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["constraint_violations"] == [] and all(f["latency_ms"] <= limit for f in summary["front"])


def test_a_crash_exits_70_never_the_gates_regression_code(monkeypatch, capsys):
    """An exception bitnas did not anticipate is a crash (70, with the traceback), not a regression (1)."""
    import bitnas.cli as cli

    def boom(args):
        raise KeyError("unanticipated")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["targets"].set_defaults(fn=boom)
    assert cli.main(["targets"]) == 70
    err = capsys.readouterr().err
    assert "KeyError: 'unanticipated'" in err and "internal error" in err
