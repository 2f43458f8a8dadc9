"""EdMIPS weight training: the shared weights learn only when asked to, alternating training reads the weight
split for the weights and the held-out split for alpha and beta (never the val split), and a project on a
W/A {2, 4, 8} space with the BitOps cost searches feasible candidates with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from bitnas.errors import ConfigError
from bitnas.searchers import EdmipsSearcher, Objective
from bitnas.searchers.base import validate_options
from bitnas.searchers.edmips import holdout_split
from bitnas.supernets import build_supernet

OBJ = [Objective("accuracy", "max"), Objective("bitops", "min")]
SIZE = 8  # the digits' own resolution: tiny images keep each sweep step in milliseconds
LOW = {(w, a) for w in (2, 4, 8) for a in (2, 4, 8)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    from bitnas.supernets.data import load_digits

    return load_digits(image_size=SIZE)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_supernet("bitfusion-mbv2-tiny", image_size=SIZE).eval()


def searcher(net, data, **kw):
    opts = {"cost": "bitops", "etas": (0.0, 5.0), "steps": 3, "warm_steps": 2, "batch": 16, "calib_batches": 1}
    opts.update(kw)
    return EdmipsSearcher(net.space, OBJ, seed=0, supernet=net, data=data, **opts)


def watched_sweep(s, arch, monkeypatch):
    """Run ``s.sweep(arch)``; returns the composite net, its weights as built, its units, and every batch it
    was fed after calibration as (alpha trainable, images)."""
    seen: dict = {"inputs": []}
    build = s.build

    def watching(a):
        net, units, specs = build(a)
        seen.update(net=net, units=units,
                    before={k: v.clone() for k, v in net.named_parameters() if not k.endswith(("alpha", "beta"))})
        net.register_forward_pre_hook(
            lambda m, args: seen["inputs"].append((units[0].alpha.requires_grad, args[0].detach().clone())))
        return net, units, specs

    monkeypatch.setattr(s, "build", watching)
    s.rounds = 1
    cands = s.sweep(arch)
    return cands, seen


def rows(x) -> set[bytes]:
    return {r.tobytes() for r in np.asarray(x, dtype=np.float32)}


@pytest.mark.parametrize("mode, kw", [("frozen", {}), ("joint", {"lr_weights": 1e-3}),
                                      ("alternating", {"lr_weights": 1e-3, "weight_steps": 2})])
def test_weights_change_only_when_weight_training_is_on(net, data, monkeypatch, mode, kw):
    supernet_before = {k: v.clone() for k, v in net.state_dict().items()}
    s = searcher(net, data, **kw)
    assert s.training == mode
    cands, seen = watched_sweep(s, net.space.smallest().arch_dict, monkeypatch)
    after = dict(seen["net"].named_parameters())
    changed = [k for k, v in seen["before"].items() if not torch.equal(v, after[k])]
    if mode == "frozen":
        assert changed == []
    else:
        assert len(changed) == len(seen["before"])  # every conv/fc weight and bias of the shared tensors
    assert all(not torch.allclose(u.alpha, torch.full_like(u.alpha, 0.01)) for u in seen["units"])
    assert [h["training"] for h in s.history] == [mode, mode]
    assert len(cands) == 2 and all(set(c.policy_dict.values()) <= LOW for c in cands)
    for k, v in net.state_dict().items():  # the sweep trains a copy: the supernet is only read
        assert torch.equal(v, supernet_before[k]), k


def test_alternating_training_reads_the_held_out_split_for_alpha_beta_and_the_rest_for_weights(
        net, data, monkeypatch):
    s = searcher(net, data, lr_weights=1e-3, weight_steps=2, holdout_ratio=0.25)
    split = s.splits()
    n = data.count("train")
    assert split.count("val") == round(0.25 * n) and split.count("train") + split.count("val") == n
    held, kept = rows(split.x_val), rows(split.x_train)
    assert held | kept == rows(data.x_train)
    _, seen = watched_sweep(s, net.space.largest().arch_dict, monkeypatch)
    arch_steps = [x for trains_alpha, x in seen["inputs"] if trains_alpha]
    weight_steps = [x for trains_alpha, x in seen["inputs"] if not trains_alpha]
    assert len(arch_steps) == 3 + 2 and len(weight_steps) == 2 * (3 + 2)
    fed_arch = set().union(*(rows(x) for x in arch_steps))
    fed_weights = set().union(*(rows(x) for x in weight_steps))
    assert fed_arch <= held and not fed_arch & (kept - held)
    assert fed_weights <= kept and not fed_weights & (held - kept)
    assert not (fed_arch | fed_weights) & (rows(data.x_val) - rows(data.x_train))  # the val split is not read
    rec = s.history[-1]
    assert rec["training"] == "alternating" and np.isfinite(rec["weight_loss"]) and np.isfinite(rec["arch_loss"])


def test_the_held_out_split_is_fixed_by_the_seed():
    from bitnas.supernets.data import load_digits

    d = load_digits(image_size=SIZE)
    a, b, c = holdout_split(d, 0.5, 0), holdout_split(d, 0.5, 0), holdout_split(d, 0.5, 1)
    assert np.array_equal(a.y_val, b.y_val) and np.array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.x_val, c.x_val)


def test_weight_training_options_are_typed_and_checked(net, data):
    ok = validate_options(EdmipsSearcher, {"weight_steps": 2, "lr_weights": 1e-3, "holdout_ratio": 0.3}, "p")
    assert ok == {"weight_steps": 2, "lr_weights": 1e-3, "holdout_ratio": 0.3}
    for bad in ({"weight_steps": -1}, {"weight_steps": "two"}, {"holdout_ratio": 1.5}, {"lr_weights": -0.1}):
        with pytest.raises(ConfigError, match="search.options"):
            validate_options(EdmipsSearcher, bad, "p")
    with pytest.raises(ConfigError, match="lr_weights"):
        searcher(net, data, weight_steps=2)
    with pytest.raises(ConfigError, match="holdout_ratio"):
        searcher(net, data, lr_weights=1e-3, weight_steps=1, holdout_ratio=1.0)


def test_a_low_bit_project_searches_feasible_candidates_with_bitops_and_weight_training(tmp_path, net):
    """bitfusion-mbv2-tiny (W/A {2, 4, 8}) from ``bitnas init``, searched by edmips with its options from
    project.yaml. The problem is built from the project's supernet, data and calibration without the LUT:
    neither the objectives (accuracy, BitOps) nor edmips' BitOps cost reads it."""
    from bitnas.cli import main
    from bitnas.objectives import resolve
    from bitnas.problem import Problem
    from bitnas.project import Project
    from bitnas.searchers import Study, run_search
    from bitnas.supernets.evaluate import calibration_batches

    run = tmp_path / "run"
    assert main(["init", str(run), "--space", "bitfusion-mbv2-tiny", "--target", "bitfusion"]) == 0
    torch.save({"model": net.state_dict(), "fingerprint": "untrained"}, run / "weights.pt")
    cfg = yaml.safe_load((run / "project.yaml").read_text())
    cfg["train"]["checkpoint"] = str(run / "weights.pt")
    cfg["data"]["image_size"] = SIZE
    lo, hi = (net.space.smallest((2, 2)), net.space.largest((8, 8)))
    gbitops = [sum(s.macs * s.w_bits * s.a_bits for s in net.layers(c)) / 1e9 for c in (lo, hi)]
    budget = gbitops[0] + 0.3 * (gbitops[1] - gbitops[0])
    options = {"cost": "bitops", "etas": [0.0, 2.0, 20.0], "steps": 2, "warm_steps": 2, "batch": 16,
               "calib_batches": 1, "lr_weights": 1e-3, "weight_steps": 1, "start": "random"}
    cfg["search"].update({"searcher": "edmips", "budget": 6, "pop_size": 4, "calib_batches": 1,
                          "objectives": ["accuracy", "bitops"], "constraints": {"bitops": budget},
                          "options": {**options, "weight_steps": "one"}})
    (run / "project.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="weight_steps"):
        Project.load(run)
    cfg["search"]["options"] = options
    (run / "project.yaml").write_text(yaml.safe_dump(cfg))
    project = Project.load(run)
    supernet, d = project.supernet(), project.data()
    assert d.image_size == SIZE
    calib = calibration_batches(d, 1, 64, 0)
    problem = Problem(supernet=supernet, data=d, lut=None, lut_path=None, calib=calib, reduce_range=False,
                      objectives=resolve(["accuracy", "bitops"], "test"), constraints={"bitops": budget},
                      problem={"test": "edmips-lowbit"})
    s = project.make_searcher(problem)
    assert isinstance(s, EdmipsSearcher) and s.training == "alternating" and s.cost == "bitops"
    study = Study(tmp_path / "study.sqlite", problem.problem)
    try:
        evals = run_search(s, problem.evaluate, 6, study)
    finally:
        study.close()
    assert len(evals) == 6
    policies = [set(e.candidate.policy_dict.values()) for e in evals]
    assert all(p <= LOW for p in policies) and any(p - {(8, 8)} for p in policies)
    feasible = [e for e in evals if e.objectives["bitops"] <= budget + 1e-12]
    assert feasible and all(0.0 <= e.objectives["accuracy"] <= 1.0 for e in evals)
    assert {h["training"] for h in s.history} == {"alternating"}
