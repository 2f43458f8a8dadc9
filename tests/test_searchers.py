import numpy as np
import pytest

from bitnas.errors import UserError
from bitnas.searchers import (
    Nsga2Searcher,
    Objective,
    Study,
    hypervolume,
    knee_point,
    non_dominated,
    run_search,
)
from bitnas.supernets import get_space

OBJ = [Objective("acc", "max"), Objective("cost", "min")]


def synthetic(space):
    """A cheap, deterministic two-objective problem over the real encoding."""
    def evaluate(c):
        v = space.encode(c).astype(float)
        return {"acc": float(v[: len(v) // 2].sum()), "cost": float(v.sum() + (v[::3] ** 2).sum())}
    return evaluate


def run(tmp_path, name, budget, seed=0, calls=None):
    space = get_space("mbv2-tiny")
    ev = synthetic(space)

    def counted(c):
        if calls is not None:
            calls.append(c.id)
        return ev(c)

    study = Study(tmp_path / f"{name}.sqlite", {"problem": "synthetic"})
    s = Nsga2Searcher(space, OBJ, seed=seed, pop_size=10)
    out = run_search(s, counted, budget, study)
    study.close()
    return out


def test_nsga2_is_deterministic_for_a_seed(tmp_path):
    a = [e.candidate.id for e in run(tmp_path, "a", 40, seed=3)]
    b = [e.candidate.id for e in run(tmp_path, "b", 40, seed=3)]
    c = [e.candidate.id for e in run(tmp_path, "c", 40, seed=4)]
    assert a == b and a != c


def test_budget_is_respected_and_candidates_are_distinct(tmp_path):
    evals = run(tmp_path, "x", 33)
    assert len(evals) == 33 and len({e.candidate.id for e in evals}) == 33


def test_search_improves_on_its_initial_population(tmp_path):
    evals = run(tmp_path, "imp", 120)
    F = np.array([[-e.objectives["acc"], e.objectives["cost"]] for e in evals])
    ref = F.max(axis=0) + 1
    assert hypervolume(F, ref) > hypervolume(F[:10], ref)


def test_killed_search_resumes_without_paying_again(tmp_path):
    full = run(tmp_path, "full", 50, seed=1)
    first_calls, second_calls = [], []
    run(tmp_path, "resumed", 20, seed=1, calls=first_calls)
    resumed = run(tmp_path, "resumed", 50, seed=1, calls=second_calls)
    assert len(first_calls) == 20 and len(second_calls) == 30
    assert not set(first_calls) & set(second_calls)
    assert [e.candidate.id for e in resumed] == [e.candidate.id for e in full]


def test_study_of_another_problem_is_refused(tmp_path):
    Study(tmp_path / "s.sqlite", {"p": 1}).close()
    with pytest.raises(UserError, match="another problem"):
        Study(tmp_path / "s.sqlite", {"p": 2})
    (tmp_path / "junk.sqlite").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(UserError, match="junk.sqlite: not a bitnas study"):
        Study(tmp_path / "junk.sqlite", {"p": 1})


def test_pareto_utilities_on_a_hand_example():
    F = np.array([[1, 5], [2, 2], [3, 1], [3, 3], [5, 5], [1, 5]])
    assert non_dominated(F).tolist() == [True, True, True, False, False, True]
    front = F[non_dominated(F)]
    assert front[knee_point(front)].tolist() == [2, 2]
    assert hypervolume(np.array([[1.0, 1.0]]), np.array([2.0, 3.0])) == pytest.approx(2.0)
    assert hypervolume(np.array([[4.0, 4.0]]), np.array([2.0, 3.0])) == 0.0


def _cheap_problem(space):
    """Accuracy needs a true evaluation; cost (the encoding's sum) is known exactly before any."""
    def cheap(c):
        return {"cost": float(space.encode(c).sum())}
    return cheap


@pytest.mark.parametrize("name", ["linas", "bo", "evolution"])
def test_model_based_searchers_start_on_the_cheap_front(name):
    from bitnas.searchers import SEARCHERS

    space = get_space("mbv2-tiny")
    cheap = _cheap_problem(space)
    s = SEARCHERS[name](space, OBJ, seed=2, pop_size=10, cheap=cheap)
    r = SEARCHERS["random"](space, OBJ, seed=2, pop_size=10, cheap=cheap)
    design, uniform = s.ask(), r.ask()
    assert len(design) == 10 and len({c.id for c in design}) == 10
    costs = [cheap(c)["cost"] for c in design]
    # the first half comes from the cheap front of a 200-candidate pool: far cheaper than uniform samples
    assert max(costs[:5]) < min(cheap(c)["cost"] for c in uniform)
    # the second half stays uniform, so the predictors see the whole space
    assert np.median(costs[5:]) > max(costs[:5])
    # and init="random" gives exactly the random searcher's first population
    plain = SEARCHERS[name](space, OBJ, seed=2, pop_size=10, cheap=cheap, init="random").ask()
    assert [c.id for c in plain] == [c.id for c in uniform]


def test_unknown_initial_design_is_refused():
    from bitnas.errors import ConfigError
    from bitnas.searchers import SEARCHERS

    with pytest.raises(ConfigError, match="unknown init 'grid'"):
        SEARCHERS["linas"](get_space("mbv2-tiny"), OBJ, init="grid")
