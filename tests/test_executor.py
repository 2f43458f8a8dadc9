"""Executors of true evaluations: a process pool and a local Ray give the study the in-process search gives;
two processes on one study never pay for a candidate twice; the executor section is checked like the rest."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import time

import numpy as np
import pytest

import tests.test_cli_search as cli_search
from bitnas.cli import main

demo_run = cli_search.demo_run  # a trained checkpoint and a LUT of this device, module-scoped


def _study(folder) -> list[tuple[str, dict]]:
    db = sqlite3.connect(folder / "study.sqlite")
    return sorted((cid, json.loads(obj)) for cid, obj in db.execute("SELECT id, objectives FROM evaluations"))


@pytest.mark.parametrize("executor, message", [
    ({"kind": "pool", "workerz": 2}, "search.executor.workerz"),
    ({"kind": "threads"}, "search.executor.kind"),
    ({"kind": "pool", "workers": 0}, "search.executor.workers"),
    ({"kind": "pool", "address": "10.0.0.5:6379"}, "'address' applies to kind ray"),
])
def test_bad_executor_section_is_one_error_naming_the_key(tmp_path, capsys, executor, message):
    path = cli_search._project(tmp_path / "o", executor=executor)
    assert main(["search", "--project", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and str(path) in err and message in err


def test_pool_and_ray_give_the_in_process_study(tmp_path, capsys, demo_run):
    """The same seed gives the same candidates and objectives whichever executor evaluated them; the workers
    rebuild the problem from the project while the parent holds the run folder's lock."""
    ray = pytest.importorskip("ray")
    _, demo = demo_run
    base = {"searcher": "nsga2", "budget": 6, "pop_size": 3, "seed": 3, "calib_batches": 1}  # two generations
    studies = {}
    for kind in ("inprocess", "pool", "ray"):
        folder = tmp_path / kind
        path = cli_search._project(folder, demo, **base, executor={"kind": kind, "workers": 2})
        assert main(["search", "--project", str(path), "--json"]) == 0, capsys.readouterr().err
        summary = json.loads(capsys.readouterr().out)
        assert summary["evaluations"] == 6 and len(summary["history"]) == 6
        studies[kind] = _study(folder)
        assert not ray.is_initialized()  # the local Ray it started is shut down
    assert len(studies["inprocess"]) == 6
    assert studies["pool"] == studies["inprocess"]
    assert studies["ray"] == studies["inprocess"]


def _listening_not_loopback() -> set[str]:
    """Local addresses of listening TCP sockets not on 127.0.0.0/8 (from /proc/net/tcp)."""
    out = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and not local.split(":")[0].endswith("7F"):
            out.add(local)
    return out


def test_local_ray_binds_to_localhost_without_dashboard_or_usage_stats():
    ray = pytest.importorskip("ray")
    import os

    from bitnas.searchers.executor import ray_init

    before = _listening_not_loopback()
    assert ray_init(1)
    try:
        assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
        assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        assert _listening_not_loopback() <= before  # no port of Ray's (dashboard included) beyond localhost
        assert not ray_init(1)  # a running Ray is joined, never restarted
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------------ two processes
def _toy_search(study_path: str, log: str, go: str, budget: int, ready: str | None = None) -> None:
    """A seeded random search on mbv2-tiny whose evaluation appends the candidate id to ``log`` (the pay);
    it starts when ``go`` exists, after writing ``ready`` once its imports are done."""
    import os
    from pathlib import Path

    from bitnas.api import OBJECTIVES
    from bitnas.searchers import RandomSearcher, Study, run_search
    from bitnas.supernets import get_space

    if ready:
        Path(ready).touch()

    space = get_space("mbv2-tiny")
    objectives = [OBJECTIVES.get("accuracy"), OBJECTIVES.get("size_bytes")]

    def evaluate(c):
        with open(log, "a") as f:
            f.write(f"{c.id} {os.getpid()}\n")
        time.sleep(0.05)
        x = space.encode(c)
        return {"accuracy": float(np.sin(x.sum())), "size_bytes": float(x @ np.arange(len(x)))}

    while not os.path.exists(go):
        time.sleep(0.01)
    study = Study(study_path, {"hash": "toy"})
    run_search(RandomSearcher(space, objectives, seed=5, pop_size=4), evaluate, budget, study)
    study.close()


def test_two_processes_on_one_study_never_pay_a_candidate_twice(tmp_path):
    from bitnas.searchers import Study

    study, log, go, ready = (tmp_path / n for n in ("study.sqlite", "paid.log", "go", "ready"))
    child = multiprocessing.get_context("spawn").Process(target=_toy_search,
                                                          args=(str(study), str(log), str(go), 40, str(ready)))
    child.start()
    deadline = time.monotonic() + 120
    while not ready.exists() and child.is_alive() and time.monotonic() < deadline:  # the child imports bitnas
        time.sleep(0.05)
    assert ready.exists(), "the child process never got ready"
    go.touch()  # both start together, on the same candidates
    _toy_search(str(study), str(log), str(go), 40)
    child.join(60)
    assert child.exitcode == 0
    paid = [line.split() for line in log.read_text().splitlines()]
    ids = [cid for cid, _ in paid]
    assert len(ids) == len(set(ids)), "a candidate was evaluated twice"
    assert len({pid for _, pid in paid}) == 2, "one process did all the work: no contention was tested"
    db = sqlite3.connect(study)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = db.execute("SELECT id, seq FROM evaluations ORDER BY seq").fetchall()
    assert sorted(r[0] for r in rows) == sorted(ids) and [r[1] for r in rows] == list(range(len(rows)))
    assert db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # every claim released
    s = Study(study, {"hash": "toy"})
    assert len(s) >= 40
    s.close()


def test_a_claim_of_a_dead_process_is_taken_over(tmp_path):
    import subprocess
    import sys

    from bitnas.searchers import Study

    s = Study(tmp_path / "s.sqlite", {"hash": "x"})
    # a process that claims a candidate, then dies without evaluating it
    code = ("import os, sys; from bitnas.searchers import Study; "
            "s = Study(sys.argv[1], {'hash': 'x'}); assert s.claim('abc') == 'mine'; os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.sqlite")], check=True)
    assert s.db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 1
    assert s.claim("abc") == "mine"
    other = Study(tmp_path / "s.sqlite", {"hash": "x"})
    assert other.claim("abc") == "taken"  # this process is alive: its claim holds
    other.close()
    s.close()
