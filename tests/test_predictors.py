"""Predictors on the one-hot encoding: fit quality, CV selection, APQ transfer and the ranking metrics."""

import numpy as np
import pytest

from bitnas.api import PREDICTORS
from bitnas.errors import ConfigError
from bitnas.searchers.predictors import (
    make_predictor,
    metrics,
    onehot,
    onehot_columns,
    pairwise_accuracy,
    select_by_cv,
)
from bitnas.supernets import get_space

SPACE = get_space("mbv2-tiny")


def problem(n, seed, float_policy=False):
    """Candidates and a smooth 'accuracy': arch effect plus a penalty per INT8 layer, on the real encoding."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).normal(0, 0.01, SPACE.onehot_size)
    pol = onehot_columns(SPACE, "policy")
    cands = []
    for _ in range(n):
        c = SPACE.sample(rng)
        cands.append(SPACE.make(c.arch_dict) if float_policy else c)
    X = onehot(SPACE, cands)
    arch_part = X.copy()
    arch_part[:, pol] = 0
    n_int8 = np.array([sum(1 for b in c.policy_dict.values() if b == (8, 8)) for c in cands])
    y = 0.9 + arch_part @ w - 0.002 * n_int8
    return cands, X, y


def test_metrics_on_hand_examples():
    m = metrics(np.array([1.0, 2.0, 4.0]), np.array([1.1, 1.8, 4.0]))
    assert m["mape"] == pytest.approx((10 + 10 + 0) / 3)
    assert m["kendall_tau"] == pytest.approx(1.0) and m["pairwise_accuracy"] == 1.0
    assert pairwise_accuracy(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == 0.0
    assert pairwise_accuracy(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(2 / 3)


def test_onehot_columns_partition_the_encoding():
    a, p = onehot_columns(SPACE, "arch"), onehot_columns(SPACE, "policy")
    assert len(a) + len(p) == SPACE.onehot_size and not set(a) & set(p)
    assert onehot(SPACE, [SPACE.largest()]).shape == (1, SPACE.onehot_size)


@pytest.mark.parametrize("kind", PREDICTORS.names())
def test_each_predictor_ranks_held_out_candidates(kind):
    _, X, y = problem(120, 0)
    _, Xt, yt = problem(50, 1)
    kw = {"epochs": 30} if kind == "mlp" else {}
    pred = make_predictor(kind, seed=0, **kw).fit(X, y)
    m = metrics(yt, pred.predict(Xt))
    assert m["kendall_tau"] > 0.4 and m["pairwise_accuracy"] > 0.7 and m["mape"] < 2.0


def test_gp_gives_uncertainty_that_grows_away_from_data():
    _, X, y = problem(40, 0)
    gp = make_predictor("gp").fit(X, y)
    _, s_train = gp.predict_std(X[:5])
    _, s_new = gp.predict_std(problem(5, 7)[1])
    assert np.all(s_new > s_train.mean())


def test_cv_selection_prefers_ridge_on_a_linear_target():
    _, X, y = problem(60, 0)
    kind, errors = select_by_cv(X, y, ("ridge", "svr"), seed=0)
    assert set(errors) == {"ridge", "svr"} and kind == "ridge" and errors["ridge"] < errors["svr"]


def test_apq_transfer_beats_scratch_on_few_quantized_samples():
    _, Xf, yf = problem(120, 10, float_policy=True)
    _, Xq, yq = problem(12, 11)
    _, Xt, yt = problem(60, 12)
    arch, every = onehot_columns(SPACE, "arch"), np.arange(SPACE.onehot_size)
    pre = make_predictor("mlp", seed=0, epochs=40).fit(Xf, yf, columns=arch)
    transfer = metrics(yt, pre.transfer(every, Xq, yq, epochs=30).predict(Xt))
    scratch = metrics(yt, make_predictor("mlp", seed=0, epochs=60).fit(Xq, yq).predict(Xt))
    assert transfer["kendall_tau"] > scratch["kendall_tau"] + 0.1
    assert transfer["mape"] < scratch["mape"]


def test_mlp_is_deterministic_and_has_apq_shape():
    _, X, y = problem(30, 0)
    a = make_predictor("mlp", seed=3, epochs=5).fit(X, y)
    b = make_predictor("mlp", seed=3, epochs=5).fit(X, y)
    assert np.array_equal(a.predict(X), b.predict(X))
    widths = [m.out_features for m in a.net if hasattr(m, "out_features")]
    assert widths == [400, 400, 400, 1]


def test_bad_predictor_requests_are_config_errors():
    with pytest.raises(ConfigError, match="unknown predictor 'xgb'"):
        make_predictor("xgb")
    with pytest.raises(ConfigError, match="pre-trained"):
        make_predictor("mlp").transfer(np.arange(3), np.zeros((2, 3)), np.zeros(2))
