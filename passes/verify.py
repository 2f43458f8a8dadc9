"""Verify: run the artifact on each runtime, check parity and accuracy, time it against its FP32 export."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from bitnas.backends import get_backend
from bitnas.backends.base import Measurement, PairedRatio, interleaved_samples
from bitnas.config import StrictModel
from bitnas.errors import VerificationError
from bitnas.io import sha256_file
from bitnas.passes.assign_bits import layer_bits_of
from bitnas.passes.export_onnx import INPUT_NAME, OnnxModel
from bitnas.pipeline import Pass, PassContext
from bitnas.supernets.evaluate import calibration_batches
from bitnas.supernets.static import quantize_net

VAL_BATCH = 256  # val images read and run per step


def run_batched(backend, runner, x: np.ndarray, batch: int = 256, input_name: str = INPUT_NAME) -> np.ndarray:
    """First output of ``runner`` over ``x`` in batches (of one where the backend compiles a fixed batch)."""
    batch = getattr(backend, "static_batch", None) or batch
    return np.concatenate([runner({input_name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


class Verify(Pass):
    """Accuracy on the val split and top-1 parity on every runtime; latency as a ratio to FP32
    measured in one run: the median over interleaved rounds of each round's ratio."""

    class Config(StrictModel):
        backends: tuple[str, ...] = Field(("ort", "openvino", "tvm"), min_length=1,
                                          description="runtimes to run (bitnas.api.BACKENDS that execute ONNX)")

        @field_validator("backends")
        @classmethod
        def _runtimes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            from bitnas.api import BACKENDS

            for name in v:
                if name not in BACKENDS or getattr(BACKENDS.get(name), "simulated", False):
                    runs = [n for n, b in BACKENDS.items() if not getattr(b, "simulated", False)]
                    raise ValueError(f"'{name}' is not a runtime that executes ONNX (known: {', '.join(runs)})")
            return v
        threads: int = Field(1, ge=1, description="intra-op threads while timing")
        warmup: int = Field(20, ge=0, description="untimed runs per model")
        repeats: int = Field(300, ge=10, description="timed runs per model (batch 1)")
        rounds: int = Field(10, ge=1, description="interleaved rounds the repeats are split into")
        statistic: Literal["p10", "median"] = Field("p10", description="latency statistic reported")
        max_accuracy_drop: float | None = Field(
            None, ge=0.0, le=1.0, description="fail when a runtime's accuracy falls more than this (absolute) below "
                                              "the FP32 export's on the same runtime; None: recorded, not checked")

    @staticmethod
    def _reference(model: OnnxModel, ctx: PassContext):
        """The simulated-quantization twin of the artifact: the pipeline's last torch net, the graph's bits."""
        net = ctx.inputs.get("last_static_net")
        quant = ctx.results.get("quantization")
        if net is None or quant is None:
            return None
        calib = calibration_batches(ctx.inputs["data"], quant["calibration"]["batches"],
                                    quant["calibration"]["batch_size"], ctx.seed)
        return quantize_net(net, layer_bits_of(model.path), calib, quant["reduce_range"])

    def run(self, model: OnnxModel, ctx: PassContext) -> OnnxModel:
        data = ctx.need("data", self.name)
        reference = ctx.inputs.get("reference_net") or self._reference(model, ctx)
        runners = {}
        for name in self.config.backends:
            backend = get_backend(name, threads=self.config.threads)
            runners[name] = (backend, backend.compile(model.path), backend.compile(model.float_path))
        # the val split is read once, a batch at a time, through every runtime and the reference
        labels: list[np.ndarray] = []
        top1: dict[str, tuple[list, list]] = {name: ([], []) for name in runners}
        bad = {name: [0, 0] for name in runners}
        ref_top1: list[np.ndarray] = []
        ref_error = dict.fromkeys(runners, 0.0)
        ref_error_sum = dict.fromkeys(runners, 0.0)  # and the count of logits summed, for the mean
        ref_logits = 0
        for x, y in data.batches("val", VAL_BATCH):
            labels.append(y.numpy())
            xb = x.numpy()
            ref = None
            if reference is not None:
                with torch.no_grad():
                    ref = reference(x).numpy()
                ref_top1.append(ref.argmax(1))
                ref_logits += ref.size
            for name, (backend, q, f) in runners.items():
                lq, lf = run_batched(backend, q, xb), run_batched(backend, f, xb)
                for i, out in enumerate((lq, lf)):
                    bad[name][i] += int((~np.isfinite(out)).any(axis=tuple(range(1, out.ndim))).sum())
                    top1[name][i].append(out.argmax(1))
                if ref is not None:
                    ref_error[name] = max(ref_error[name], float(np.abs(lq - ref).max()))
                    ref_error_sum[name] += float(np.abs(lq - ref).sum())
        y_val = np.concatenate(labels)
        ref_preds = np.concatenate(ref_top1) if ref_top1 else None
        feed = {INPUT_NAME: data.head("val", 1)[0]}
        measured: dict[str, Any] = {}
        preds: dict[str, np.ndarray] = {}
        for name, (backend, q, f) in runners.items():
            for what, n_bad, path in (("artifact", bad[name][0], model.path),
                                      ("FP32 export", bad[name][1], model.float_path)):
                if n_bad:
                    raise VerificationError(f"{path}: the {what} gives non-finite outputs on {name} for {n_bad} of "
                                            f"{len(y_val)} validation images")
            preds[name], preds_fp32 = np.concatenate(top1[name][0]), np.concatenate(top1[name][1])
            timers = {"q": backend.timer(model.path, feed, q), "f": backend.timer(model.float_path, feed, f)}
            raw = interleaved_samples(timers, self.config.warmup, self.config.repeats, self.config.rounds)
            timing = {k: Measurement.from_samples(np.concatenate(v)) for k, v in raw.items()}
            tq, tf = timing["q"].stat(self.config.statistic), timing["f"].stat(self.config.statistic)
            ratio = PairedRatio.of(raw["q"], raw["f"], self.config.statistic)
            entry: dict[str, Any] = {
                "accuracy": float((preds[name] == y_val).mean()),
                "accuracy_fp32": float((preds_fp32 == y_val).mean()),
                "latency_ms": tq,
                "latency_ms_fp32": tf,
                "latency_ratio_to_fp32": ratio.ratio,
                "latency_ratio_iqr": ratio.iqr,
                "latency_ratio_rounds": len(ratio.rounds),
                "latency_ms_median": timing["q"].median_ms,
                "latency_ms_fp32_median": timing["f"].median_ms,
                "latency_iqr_ms": timing["q"].iqr_ms,
                "statistic": self.config.statistic,
                "timed_runs": self.config.repeats,
                "threads": self.config.threads,
                "batch": 1,
            }
            drop = entry["accuracy_fp32"] - entry["accuracy"]
            if self.config.max_accuracy_drop is not None and drop > self.config.max_accuracy_drop:
                raise VerificationError(f"{model.path}: accuracy on {name} is {entry['accuracy']:.4f}, "
                                        f"{drop:.4f} below the FP32 export's {entry['accuracy_fp32']:.4f} (Verify "
                                        f"max_accuracy_drop {self.config.max_accuracy_drop})")
            if ref_preds is not None:
                entry["top1_agreement_vs_fakequant"] = float((preds[name] == ref_preds).mean())
                entry["max_abs_logit_error_vs_fakequant"] = ref_error[name]
                # the largest error is a few steps of the output's quantization grid; the mean tells two
                # graphs of one candidate apart
                entry["mean_abs_logit_error_vs_fakequant"] = ref_error_sum[name] / max(ref_logits, 1)
            measured[name] = entry
        names = list(preds)
        if len(names) > 1:
            base = preds[names[0]]
            measured["top1_agreement"] = {f"{names[0]}~{n}": float((base == preds[n]).mean()) for n in names[1:]}
        primary = measured[names[0]]
        measured.update({k: primary[k] for k in ("latency_ms", "latency_ms_fp32", "accuracy", "accuracy_fp32")})
        measured["primary_backend"] = names[0]
        measured["model_sha256"] = sha256_file(model.path)  # the bytes measured: Package ships only these
        ctx.results["measured"] = measured
        return model
