"""Objective predictors on the one-hot encoding: ridge, SVR, GP, MLP, APQ transfer, and their metrics.

Every predictor has ``fit(X, y) -> self`` and ``predict(X) -> mean``; the GP also gives
``predict_std(X) -> (mean, std)``. Inputs are one-hot rows of ``SearchSpace.encode(c, "onehot")``.
APQ's transfer (``MlpPredictor.transfer``) pre-trains on the architecture part of the encoding with
float-accuracy targets, then widens the first layer with zero-initialized bit inputs and fine-tunes on a
few quantized samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bitnas.api import PREDICTORS
from bitnas.errors import ConfigError
from bitnas.space import Candidate, SearchSpace


def onehot(space: SearchSpace, candidates: Sequence[Candidate]) -> np.ndarray:
    """One-hot rows (float64) of ``candidates``."""
    if not candidates:
        return np.zeros((0, space.onehot_size))
    return np.stack([space.encode(c, "onehot") for c in candidates]).astype(np.float64)


def onehot_columns(space: SearchSpace, kind: str) -> np.ndarray:
    """Indices of the one-hot columns that belong to the genes of ``kind`` ('arch' or 'policy')."""
    cols, start = [], 0
    for g in space.genes:
        if g.kind == kind:
            cols.extend(range(start, start + len(g.options)))
        start += len(g.options)
    return np.array(cols, dtype=np.int64)


class _Scaled:
    """Standardizes the target so one set of hyper-parameters fits objectives of any scale."""

    def _scale(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        self.mu, self.sd = float(y.mean()), float(y.std()) or 1.0
        return (y - self.mu) / self.sd


class RidgePredictor(_Scaled):
    """Ridge regression; the penalty is chosen by leave-one-out cross-validation."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgePredictor:
        from sklearn.linear_model import RidgeCV

        self.model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(X, self._scale(y))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict(X) * self.sd + self.mu


class SvrPredictor(_Scaled):
    """Support vector regression with an RBF kernel."""

    def __init__(self, seed: int = 0, C: float = 3.0, epsilon: float = 0.05):
        self.seed, self.C, self.epsilon = seed, C, epsilon

    def fit(self, X: np.ndarray, y: np.ndarray) -> SvrPredictor:
        from sklearn.svm import SVR

        self.model = SVR(C=self.C, epsilon=self.epsilon, gamma="scale").fit(X, self._scale(y))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict(X) * self.sd + self.mu


class GpPredictor(_Scaled):
    """Gaussian process with a Matérn-5/2 kernel (distance on the one-hot encoding) plus noise."""

    def __init__(self, seed: int = 0, nu: float = 2.5, restarts: int = 1):
        self.seed, self.nu, self.restarts = seed, nu, restarts

    def fit(self, X: np.ndarray, y: np.ndarray) -> GpPredictor:
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        kernel = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(length_scale=3.0, length_scale_bounds=(0.1, 100.0),
                                                           nu=self.nu) + WhiteKernel(1e-2, (1e-6, 1.0))
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():  # hyper-parameters at a bound are expected on tiny samples
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model = GaussianProcessRegressor(kernel, normalize_y=False, n_restarts_optimizer=self.restarts,
                                                  random_state=self.seed).fit(X, self._scale(y))
        return self

    def predict_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self.model.predict(X, return_std=True)
        return mean * self.sd + self.mu, std * self.sd

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_std(X)[0]


class MlpPredictor(_Scaled):
    """APQ's accuracy predictor: an MLP with three hidden layers of 400 units (ReLU), trained with Adam."""

    def __init__(self, seed: int = 0, hidden: int = 400, layers: int = 3, epochs: int = 100, lr: float = 1e-3,
                 weight_decay: float = 1e-4):
        self.seed, self.hidden, self.layers = seed, hidden, layers
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay
        self.net = None
        self.columns: np.ndarray | None = None

    def _build(self, n_in: int):
        import torch
        from torch import nn

        torch.manual_seed(self.seed)
        mods: list[Any] = []
        width = n_in
        for _ in range(self.layers):
            mods += [nn.Linear(width, self.hidden), nn.ReLU()]
            width = self.hidden
        mods.append(nn.Linear(width, 1))
        return nn.Sequential(*mods)

    def _train(self, X: np.ndarray, y: np.ndarray, epochs: int) -> None:
        import torch

        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        Xt = torch.as_tensor(X, dtype=torch.float32)
        yt = torch.as_tensor(y, dtype=torch.float32)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        batch = min(128, len(Xt))
        self.net.train()
        for _ in range(epochs):
            perm = torch.randperm(len(Xt), generator=gen)
            for i in range(0, len(Xt), batch):
                idx = perm[i:i + batch]
                opt.zero_grad()
                loss = torch.mean((self.net(Xt[idx]).squeeze(1) - yt[idx]) ** 2)
                loss.backward()
                opt.step()
        self.net.eval()

    def _x(self, X: np.ndarray) -> np.ndarray:
        return X if self.columns is None else X[:, self.columns]

    def fit(self, X: np.ndarray, y: np.ndarray, columns: np.ndarray | None = None) -> MlpPredictor:
        """Train from scratch on the given one-hot columns (all when ``columns`` is None)."""
        self.columns = columns
        Xs = self._x(X)
        self.net = self._build(Xs.shape[1])
        self._train(Xs, self._scale(y), self.epochs)
        return self

    def transfer(self, columns: np.ndarray, X: np.ndarray, y: np.ndarray, epochs: int | None = None) -> MlpPredictor:
        """APQ transfer: widen the input to ``columns`` (new inputs start at zero weight) and fine-tune."""
        import torch

        if self.net is None or self.columns is None:
            raise ConfigError("transfer needs a predictor pre-trained on a subset of the encoding's columns")
        old_cols = list(self.columns)
        first = self.net[0]
        new = torch.nn.Linear(len(columns), first.out_features)
        with torch.no_grad():
            new.weight.zero_()
            new.bias.copy_(first.bias)
            pos = {c: i for i, c in enumerate(columns)}
            for j, c in enumerate(old_cols):
                new.weight[:, pos[c]] = first.weight[:, j]
        self.net[0] = new
        # targets stay on the pre-training scale, so the float knowledge carries over unchanged
        self.columns = np.asarray(columns)
        self._train(self._x(X), (np.asarray(y, dtype=np.float64) - self.mu) / self.sd,
                    epochs if epochs is not None else self.epochs)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.net(torch.as_tensor(self._x(X), dtype=torch.float32)).squeeze(1).numpy()
        return out.astype(np.float64) * self.sd + self.mu


for _name, _cls in (("ridge", RidgePredictor), ("svr", SvrPredictor), ("gp", GpPredictor), ("mlp", MlpPredictor)):
    PREDICTORS.register(_name, _cls)


def make_predictor(kind: str, seed: int = 0, **kwargs: Any):
    """A fresh predictor of ``kind`` (a name in ``bitnas.api.PREDICTORS``, or a plug-in ``module:attr``)."""
    return PREDICTORS.get(kind, "predictor")(seed=seed, **kwargs)


def select_by_cv(X: np.ndarray, y: np.ndarray, kinds: Sequence[str] = ("ridge", "svr"), seed: int = 0,
                 folds: int = 5) -> tuple[str, dict[str, float]]:
    """The kind with the lowest k-fold mean absolute error on (X, y), and every kind's error."""
    from sklearn.model_selection import KFold

    k = max(2, min(folds, len(y)))
    errors = {}
    for kind in kinds:
        err = []
        for tr, te in KFold(k, shuffle=True, random_state=seed).split(X):
            model = make_predictor(kind, seed).fit(X[tr], y[tr])
            err.append(np.mean(np.abs(model.predict(X[te]) - y[te])))
        errors[kind] = float(np.mean(err))
    return min(errors, key=lambda kk: (errors[kk], kk)), errors


def mape(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute percentage error (in %)."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    return float(np.mean(np.abs(y_pred - y_true) / np.maximum(np.abs(y_true), 1e-12)) * 100)


def kendall_tau(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from scipy.stats import kendalltau

    tau = kendalltau(y_true, y_pred).statistic
    return float(0.0 if np.isnan(tau) else tau)


def pairwise_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of pairs with distinct true values whose order the prediction gets right."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    i, j = np.triu_indices(len(y_true), 1)
    dt = np.sign(y_true[i] - y_true[j])
    keep = dt != 0
    if not keep.any():
        return 1.0
    return float(np.mean(np.sign(y_pred[i] - y_pred[j])[keep] == dt[keep]))


def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAPE (%), Kendall tau and pairwise ranking accuracy on held-out candidates."""
    return {"mape": mape(y_true, y_pred), "kendall_tau": kendall_tau(y_true, y_pred),
            "pairwise_accuracy": pairwise_accuracy(y_true, y_pred)}
