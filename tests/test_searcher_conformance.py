"""One conformance suite every searcher of ``SEARCHERS`` must pass (ask/tell, seeds, budget, constraints, resume).

A cheap synthetic objective over the real mbv2-tiny encoding stands in for accuracy; ``cost`` is known
to the searchers through the cheap evaluator, as the LUT latency is on the demo problem. EdMIPS trains
bit selectors on a small untrained supernet with the digits.
"""

import numpy as np
import pytest
import torch

from bitnas.api import SEARCHERS, Objective
from bitnas.errors import UserError
from bitnas.searchers import Study, run_search
from bitnas.space import Candidate
from bitnas.supernets import build_supernet, get_space

OBJ = [Objective("acc", "max"), Objective("cost", "min")]
SPACE = get_space("mbv2-tiny")

FAST = {
    "random": {"pop_size": 4},
    "nsga2": {"pop_size": 4},
    "evolution": {"pop_size": 4, "batch_size": 2, "inner_pop": 6, "inner_gens": 2, "predictor_epochs": 5},
    "linas": {"pop_size": 4, "batch_size": 2, "inner_pop": 10, "inner_gens": 2},
    "bo": {"pop_size": 4, "batch_size": 2, "inner_pop": 10, "inner_gens": 2},
    "qfa": {"pop_size": 4, "samples": 4, "batch_size": 2, "inner_pop": 10, "inner_gens": 2},
    "edmips": {"pop_size": 4, "cost": "bitops", "etas": (0.0, 0.5, 2.0, 20.0), "steps": 1, "warm_steps": 1,
               "batch": 4, "calib_batches": 1, "start": "random"},
}


def synthetic(c: Candidate) -> dict[str, float]:
    v = SPACE.encode(c).astype(float)
    return {"acc": float(v[: len(v) // 2].sum()), "cost": float(v.sum() + (v[::3] ** 2).sum())}


def cheap(c: Candidate) -> dict[str, float]:
    return {"cost": synthetic(c)["cost"]}


@pytest.fixture(scope="module")
def tiny(digits):
    torch.manual_seed(0)
    return build_supernet("mbv2-tiny"), digits


def make(name, tiny, seed=0, constraints=None):
    kw = dict(FAST[name])
    if getattr(SEARCHERS[name], "needs_supernet", False):
        kw.update(supernet=tiny[0], data=tiny[1])
    return SEARCHERS[name](SPACE, OBJ, seed=seed, constraints=constraints, cheap=cheap, **kw)


def run(tmp_path, name, tiny, budget, seed=0, tag="a", calls=None, constraints=None):
    def counted(c):
        if calls is not None:
            calls.append(c)
        return synthetic(c)

    study = Study(tmp_path / f"{name}-{tag}.sqlite", {"problem": "synthetic"})
    try:
        return run_search(make(name, tiny, seed, constraints), counted, budget, study)
    finally:
        study.close()


ALL = SEARCHERS.names()


def test_every_searcher_is_in_this_suite():
    assert set(FAST) == set(SEARCHERS)


@pytest.mark.parametrize("name", ALL)
def test_ask_tell_contract(name, tiny):
    s = make(name, tiny)
    for _ in range(2):
        asked = s.ask()
        assert asked and all(isinstance(c, Candidate) for c in asked)
        for c in asked:
            assert SPACE.validate(c) == c  # canonical members of the one space
            assert SPACE.decode(SPACE.encode(c)) == c
        s.tell(asked, np.array([[-synthetic(c)["acc"], synthetic(c)["cost"]] for c in asked]))


@pytest.mark.parametrize("name", ALL)
def test_deterministic_for_a_seed(name, tiny, tmp_path):
    a = [e.candidate.id for e in run(tmp_path, name, tiny, 8, seed=3, tag="a")]
    b = [e.candidate.id for e in run(tmp_path, name, tiny, 8, seed=3, tag="b")]
    c = [e.candidate.id for e in run(tmp_path, name, tiny, 8, seed=4, tag="c")]
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", ALL)
def test_budget_is_respected(name, tiny, tmp_path):
    calls = []
    evals = run(tmp_path, name, tiny, 7, calls=calls)
    assert len(evals) == 7 and len(calls) == 7
    assert len({e.candidate.id for e in evals}) == 7


@pytest.mark.parametrize("name", ALL)
def test_constraints_are_respected_before_evaluation(name, tiny, tmp_path):
    rng = np.random.default_rng(0)
    limit = float(np.quantile([cheap(SPACE.sample(rng))["cost"] for _ in range(200)], 0.4))
    calls = []
    evals = run(tmp_path, name, tiny, 6, calls=calls, constraints={"cost": limit})
    assert len(evals) == 6
    assert all(cheap(c)["cost"] <= limit for c in calls)


def test_constraints_need_a_cheap_evaluator_and_a_known_objective():
    with pytest.raises(UserError, match="cheap evaluator"):
        SEARCHERS["random"](SPACE, OBJ, constraints={"cost": 1.0})
    with pytest.raises(UserError, match="'latency'"):
        SEARCHERS["random"](SPACE, OBJ, constraints={"latency": 1.0}, cheap=cheap)


@pytest.mark.parametrize("name", ALL)
def test_resumes_from_a_stored_study(name, tiny, tmp_path):
    full = run(tmp_path, name, tiny, 9, seed=1, tag="full")
    first, second = [], []
    run(tmp_path, name, tiny, 5, seed=1, tag="resumed", calls=first)
    resumed = run(tmp_path, name, tiny, 9, seed=1, tag="resumed", calls=second)
    assert len(first) == 5 and len(second) == 4
    assert not {c.id for c in first} & {c.id for c in second}
    assert [e.candidate.id for e in resumed] == [e.candidate.id for e in full]
