"""ONNX Runtime on the CPU."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bitnas.api import CPU_BITS, Target
from bitnas.backends.base import Backend, Runner, register, register_target
from bitnas.errors import ArtifactError
from bitnas.onnxio import load_onnx


def kernel_counts(path: str | Path) -> dict[str, int]:
    """How many nodes of each op ONNX Runtime's CPU provider runs for the model at ``path`` after all its graph
    optimizations (1 thread), most frequent first: which Q/DQ patterns became integer kernels (QLinear*)."""
    import tempfile
    from collections import Counter

    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return dict(ops.most_common())


@register
class OrtBackend(Backend):
    name = "ort"
    package = "onnxruntime"

    @classmethod
    def _available(cls) -> bool:
        import onnxruntime  # noqa: F401

        return True

    def fingerprint(self):
        import onnxruntime as ort

        fp = super().fingerprint()
        fp["providers"] = ["CPUExecutionProvider"]
        fp["runtime_version"] = ort.__version__
        return fp

    def session_options(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        return so

    def compile(self, onnx_path: str | Path) -> Runner:
        import onnxruntime as ort

        load_onnx(onnx_path, check=False)
        try:
            sess = ort.InferenceSession(str(onnx_path), self.session_options(), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"{onnx_path}: ONNX Runtime cannot load the model: {exc}") from None

        def run(inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            return sess.run(None, dict(inputs))

        return run


register_target(Target(
    name="ort-cpu", backend="ort", bit_options=CPU_BITS, int4_weights=True, bundle=True,
    verify_backends=("ort", "openvino", "tvm"),
    description="this CPU through ONNX Runtime's CPU execution provider (FP32; INT8 QDQ, weights of 2-7 bits stored as INT4 or in INT8)",
))
