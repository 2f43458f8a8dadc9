"""The search problem: a supernet, its data, a LUT, the objectives and constraints the project chose.

One true evaluation (``evaluate``), the cheap objectives (``cheap``), the identity a study is bound to, and
the fixed hypervolume normalization. ``bitnas demo``, ``bitnas search`` and the search benchmark all build
it through ``Project.problem()``, so a candidate scores the same wherever it is evaluated.

A true evaluation measures accuracy in one of three ways (``search.evaluation``):

- ``simulated``: the subnet with simulated (fake) quantization of its policy, BN recalibrated (a
  quantization-aware supernet's subnet with its own trained quantizers, BN and BatchQuant calibrated);
- ``inc-ptq`` (SimQ-NAS): the compile passes ExtractSubnet, RecalibrateBn, ExportOnnx, AssignBitwidths,
  IncStaticPtq, SubByteWeights and SubByteActivations applied to the candidate, the QDQ model run on ONNX
  Runtime;
- ``qaft`` (BOMP-NAS): quantization-aware fine-tuning at the policy's bits (``qaft_finetune``), then the
  simulated-quantization accuracy.

The two measured modes also record ``accuracy_simulated``, what ``simulated`` gives for the candidate.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitnas.errors import ConfigError
from bitnas.space import Candidate, SearchSpace


def problem_id(parts: dict[str, Any]) -> dict[str, Any]:
    """``parts`` plus a 16-hex ``hash`` of them: the identity a study is bound to."""
    parts = dict(parts)
    parts["hash"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return parts


EVALUATIONS = ("simulated", "inc-ptq", "qaft")


def evaluation_id(mode: str, qaft_epochs: int = 1, qaft_lr: float = 1e-3,
                  quantization_aware: bool = False) -> dict[str, Any]:
    """What a true evaluation of ``mode`` measures, as recorded in the problem identity (and ``search.json``)."""
    if mode == "simulated" and quantization_aware:
        return {"mode": mode, "accuracy": "the subnet with the supernet's own trained quantizers (LSQ weights, "
                                          "BatchQuant activations), BatchNorm and BatchQuant calibrated (PyTorch)"}
    if mode == "simulated":
        return {"mode": mode, "accuracy": "simulated quantization of the subnet (PyTorch)"}
    if mode == "inc-ptq":
        return {"mode": mode, "accuracy": "Intel Neural Compressor static PTQ of the ONNX export (QDQ), run on ONNX Runtime"}
    if mode == "qaft":
        return {"mode": mode, "accuracy": "simulated quantization after quantization-aware fine-tuning",
                "epochs": int(qaft_epochs), "lr": float(qaft_lr)}
    raise ConfigError(f"unknown evaluation '{mode}' (known: {', '.join(EVALUATIONS)})")


def quantization_aware(supernet: Any) -> bool:
    """Whether the supernet's subnets carry its own trained quantizers (``Supernet.quantization_aware``)."""
    return bool(getattr(supernet, "quantization_aware", False))


def check_evaluation(space: SearchSpace, mode: str, where: str = "search.evaluation",
                     supernet: Any = None) -> None:
    """Refuse ``inc-ptq`` on a space whose policy offers bits static PTQ does not produce, naming the gene,
    and any mode but ``simulated`` on a quantization-aware supernet (its subnets are already quantized)."""
    if mode != "simulated" and supernet is not None and quantization_aware(supernet):
        raise ConfigError(f"{where}: space '{space.name}' is trained with its own quantizers (LSQ weights, "
                          f"BatchQuant activations): its subnets are measured as they are, so evaluation "
                          f"'{mode}' does not apply; use simulated")
    if mode != "inc-ptq":
        return
    for g in space.policy_genes:
        for w, a in g.options:
            if (w, a) != (32, 32) and not (2 <= a <= 8 and 2 <= w <= 8):
                raise ConfigError(f"{where}: inc-ptq quantizes layers to W2-8/A2-8 or keeps them float, but space "
                                  f"'{space.name}' gene '{g.name}' offers W{w}A{a}; use simulated or qaft")


def onnx_accuracy(path: Path, data: Any, threads: int = 1) -> float:
    """Top-1 accuracy of the ONNX model at ``path`` on the val split, run on ONNX Runtime."""
    from bitnas.backends import get_backend
    from bitnas.passes.verify import VAL_BATCH, run_batched

    backend = get_backend("ort", threads=threads)
    runner = backend.compile(path)
    correct = seen = 0
    for x, y in data.batches("val", VAL_BATCH):
        correct += int((run_batched(backend, runner, x.numpy()).argmax(1) == y.numpy()).sum())
        seen += len(y)
    return correct / seen


def extreme_candidates(space: SearchSpace) -> tuple[list[Candidate], list[Candidate]]:
    """The smallest architecture at its narrowest bits and at every uniform bit option the whole policy
    offers, and the largest architecture likewise at its widest: where the cheap objectives' extremes lie
    (narrower bits are not always faster: an INT8 layer can be slower than its float twin)."""
    def bits_key(b):
        return b[0] * b[1]

    small, big = space.smallest(), space.largest()
    lo = {g.name: min(g.options, key=bits_key) for g in space.policy_genes}
    hi = {g.name: max(g.options, key=bits_key) for g in space.policy_genes}
    common = set.intersection(*(set(g.options) for g in space.policy_genes)) if space.policy_genes else set()
    smalls = [space.make(small.arch_dict, lo)] + [space.smallest(b) for b in sorted(common)]
    bigs = [space.make(big.arch_dict, hi)] + [space.largest(b) for b in sorted(common)]
    return smalls, bigs


@dataclass
class Problem:
    """Everything a search needs; ``evaluate`` is a true evaluation, ``cheap`` needs only the LUT."""

    supernet: Any
    data: Any
    lut: Any
    lut_path: Path
    calib: list
    reduce_range: bool
    objectives: list
    constraints: dict[str, float]
    problem: dict[str, Any]
    accuracy_reference: float = 0.5
    evaluation: str = "simulated"
    qaft_epochs: int = 1
    qaft_lr: float = 1e-3
    seed: int = 0  # of the calibration batches (``calib``), as the compile passes draw them
    _cheap_names: list[str] = field(default_factory=list)
    _scorer: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from bitnas.api import OBJECTIVES

        names = [o.name for o in self.objectives if o.cheap]
        for key in self.constraints:
            if key not in names:
                names.append(key)
        self._cheap_fns = {n: OBJECTIVES.get(n).compute for n in names}
        self._cheap_names = names
        evaluation_id(self.evaluation)
        check_evaluation(self.space, self.evaluation, supernet=self.supernet)

    @property
    def space(self) -> SearchSpace:
        return self.supernet.space

    @property
    def needs_evaluation(self) -> bool:
        return any(not o.cheap for o in self.objectives)

    def cheap(self, c: Candidate) -> dict[str, float]:
        """The cheap objectives and constrained quantities of ``c``: no true evaluation needed."""
        layers = self.supernet.layers(c)
        return {n: float(fn(self, layers)) for n, fn in self._cheap_fns.items()}

    def cheap_batch(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """``cheap`` of many candidates at once, given as ordinal gene rows (n x genes): table lookups per unit
        (``bitnas.scoring.BatchScorer``), the same values as ``cheap`` gives one at a time."""
        if self._scorer is None:
            from bitnas.api import OBJECTIVES
            from bitnas.objectives import BATCHED
            from bitnas.scoring import BatchScorer

            own = {}
            for n in self._cheap_names:
                fn = OBJECTIVES.get(n).compute
                if BATCHED.get(n) is not fn:
                    own[n] = (lambda f: lambda layers: f(self, layers))(fn)
            self._scorer = BatchScorer(self.space, self.supernet.layers, self.lut, self._cheap_names, own)
        return self._scorer.score(X)

    @property
    def cheap_evaluator(self):
        """What a searcher gets to compute cheap objectives: one candidate at a time, or a batch of rows."""
        from bitnas.searchers.base import CheapEvaluator

        return CheapEvaluator(self.cheap, self.cheap_batch)

    def evaluate(self, c: Candidate) -> dict[str, float]:
        """The candidate's accuracy as ``evaluation`` measures it (when an objective), plus its cheap values."""
        out = self.cheap(c)
        if not self.needs_evaluation:
            return out
        from bitnas.supernets.evaluate import accuracy, prepare_subnet
        from bitnas.supernets.static import quantize_net

        if quantization_aware(self.supernet):  # its own trained quantizers: calibrated, not quantized after
            from bitnas.supernets.qat import calibrate

            out["accuracy"] = accuracy(calibrate(self.supernet.extract(c), self.calib), self.data)
            return out
        static = prepare_subnet(self.supernet, c, self.calib)
        simulated = accuracy(quantize_net(static, c.policy_dict, self.calib, self.reduce_range), self.data)
        if self.evaluation == "simulated":
            out["accuracy"] = simulated
            return out
        out["accuracy"] = (self._accuracy_inc_ptq(c, static) if self.evaluation == "inc-ptq"
                           else self._accuracy_qaft(c, static))
        out["accuracy_simulated"] = simulated
        return out

    def _accuracy_inc_ptq(self, c: Candidate, static: Any) -> float:
        """ORT accuracy of the candidate's QDQ model, made by the compile passes in a scratch folder.

        ``static`` is what ExtractSubnet and RecalibrateBn give (the same extraction, the same batches).
        """
        from bitnas.passes import (
            AssignBitwidths,
            ExportOnnx,
            IncStaticPtq,
            SubByteActivations,
            SubByteWeights,
        )
        from bitnas.pipeline import PassContext, Sequential

        pipeline = Sequential([ExportOnnx(), AssignBitwidths(),
                               IncStaticPtq(calibration_batches=len(self.calib), reduce_range=self.reduce_range),
                               SubByteWeights(), SubByteActivations()])
        with tempfile.TemporaryDirectory(prefix="bitnas-eval-") as tmp:
            ctx = PassContext(workdir=Path(tmp), seed=self.seed,
                              inputs={"supernet": self.supernet, "data": self.data, "candidate": c})
            return onnx_accuracy(pipeline.run(static, ctx).path, self.data)

    def _accuracy_qaft(self, c: Candidate, static: Any) -> float:
        from bitnas.passes.qaft import qaft_finetune
        from bitnas.supernets.evaluate import accuracy

        q = qaft_finetune(static, c.policy_dict, self.data, self.qaft_epochs, self.qaft_lr, calib=self.calib,
                          reduce_range=self.reduce_range, seed=self.seed)
        return accuracy(q, self.data)

    def minimization(self, values: dict[str, float]) -> np.ndarray:
        """``values`` as the row of a minimization problem, in objective order."""
        return np.array([values[o.name] if o.sense == "min" else -values[o.name] for o in self.objectives], float)

    def feasible(self, values: dict[str, float]) -> bool:
        return all(values[k] <= v for k, v in self.constraints.items())

    def hv_reference(self) -> tuple[np.ndarray, np.ndarray]:
        """Fixed normalization (ideal, reference point) of the minimization rows, from the space's extremes.

        A cheap objective's ideal is 0.9x its value at the smallest, narrowest candidate, its reference
        1.05x the value at the largest, widest one; accuracy runs from 1 (ideal) to ``accuracy_reference``.
        """
        smalls, bigs = extreme_candidates(self.space)
        small = [self.cheap(c) for c in smalls]
        big = [self.cheap(c) for c in bigs]
        ideal, ref = [], []
        for o in self.objectives:
            if not o.cheap:
                ideal.append(-1.0)
                ref.append(-self.accuracy_reference)
                continue
            values = [v[o.name] for v in small + big]
            lo, hi = min(values), max(values)
            if o.sense == "min":
                ideal.append(lo * 0.9)
                ref.append(hi * 1.05 if hi > 0 else hi * 0.95 + 1e-12)
            else:
                ideal.append(-hi * 1.1)
                ref.append(-lo * 0.95)
        return np.array(ideal), np.array(ref)


def normalized_hv(F: np.ndarray, ideal: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of minimization rows ``F`` after mapping [ideal, ref] to [0, 1] (reference point 1)."""
    from bitnas.searchers import hypervolume

    if not len(F):
        return 0.0
    # a point beyond the ideal counts as the ideal, so the normalized hypervolume stays within [0, 1]
    Z = np.clip((np.asarray(F, float) - ideal) / (ref - ideal), 0.0, None)
    return hypervolume(Z, np.ones(len(ideal)))
