"""Apache TVM (Relax) compiled for this CPU with LLVM: -mcpu and AVX-512/VNNI features are detected.

ONNX models (float or INT8 QDQ) are imported with Relax's ONNX frontend and built for the host. Relax
lowers QuantizeLinear/DequantizeLinear to float arithmetic (it has no INT8 convolution kernels on the
default CPU schedule), so an INT8 QDQ model runs, and is timed, as TVM really executes it. 4-bit ONNX
tensor types are refused with ``UnsupportedBackendError``: the ONNX frontend cannot import them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bitnas.api import Target
from bitnas.backends.base import Backend, Runner, register, register_target
from bitnas.errors import ArtifactError, UnsupportedBackendError
from bitnas.fingerprint import cpu_flags
from bitnas.onnxio import input_names, load_onnx

# /proc/cpuinfo flag -> LLVM feature name (only what matters for conv/GEMM code generation)
_LLVM_FEATURES = {
    "avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f", "avx512bw": "avx512bw",
    "avx512vl": "avx512vl", "avx512dq": "avx512dq", "avx512cd": "avx512cd", "avx512_vnni": "avx512vnni",
    "avx_vnni": "avxvnni", "avx512_bf16": "avx512bf16",
}
_4BIT = {"INT4", "UINT4"}


def host_target_dict(threads: int = 1) -> dict[str, Any]:
    """The LLVM target of this CPU: detected -mcpu plus the ISA features /proc/cpuinfo reports."""
    import tvm.target.codegen as cg

    cpu = cg.llvm_get_system_cpu()
    target: dict[str, Any] = {"kind": "llvm", "num-cores": int(threads)}
    if cpu and cpu != "generic" and cg.llvm_is_valid_cpu(cpu, cg.llvm_get_system_triple()):
        target["mcpu"] = cpu
    flags = cpu_flags()
    attrs = [f"+{llvm}" for flag, llvm in _LLVM_FEATURES.items() if flag in flags]
    if attrs:
        target["mattr"] = attrs
    return target


def _four_bit_tensors(model) -> list[str]:
    import onnx

    bad = {getattr(onnx.TensorProto, t) for t in _4BIT if hasattr(onnx.TensorProto, t)}
    names = [t.name for t in model.graph.initializer if t.data_type in bad]
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.type.tensor_type.elem_type in bad:
            names.append(vi.name)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i in bad:
                names.append(node.name or node.op_type)
    return names


@register
class TvmBackend(Backend):
    name = "tvm"
    package = "apache-tvm"
    static_batch = 1  # models are built for one input shape: batch 1, as latency is measured

    @classmethod
    def _available(cls) -> bool:
        import tvm  # noqa: F401
        from tvm.relax.frontend import onnx  # noqa: F401

        return True

    def target(self):
        import tvm

        return tvm.target.Target(host_target_dict(self.threads))

    def fingerprint(self) -> dict[str, Any]:
        import tvm

        fp = super().fingerprint()
        fp["runtime_version"] = tvm.__version__
        fp["tvm_target"] = host_target_dict(self.threads)
        return fp

    def _set_threads(self) -> None:
        import tvm

        config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
        if config is not None:
            config(0, int(self.threads))  # 0: default affinity, then the number of worker threads

    def compile(self, onnx_path: str | Path) -> Runner:
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        model = load_onnx(onnx_path, check=False)
        four = _four_bit_tensors(model)
        if four:
            raise UnsupportedBackendError(
                f"{onnx_path}: TVM's ONNX frontend cannot import 4-bit tensor types (INT4/UINT4), used by "
                f"'{four[0]}'; run this model on 'ort' or lower it to INT8 first")
        names = input_names(model)
        inits = {t.name for t in model.graph.initializer}
        declared = {vi.name: [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
                    for vi in model.graph.input if vi.name not in inits}

        def build(shapes: dict[str, list[int]]):
            # shapes are pinned to the inputs actually given (symbolic dims such as batch specialised), so
            # each batch size gets code compiled for it, as a deployment at that batch would
            try:
                mod = from_onnx(model, shape_dict=shapes, keep_params_in_input=False)
            except Exception as exc:  # noqa: BLE001 - the frontend raises many types for unsupported graphs
                raise UnsupportedBackendError(
                    f"{onnx_path}: TVM's Relax ONNX frontend cannot import the model: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
            try:
                mod = relax.transform.DecomposeOpsForInference()(mod)
                executable = tvm.compile(mod, target=self.target())
            except Exception as exc:  # noqa: BLE001
                raise ArtifactError(f"{onnx_path}: TVM cannot build the model for this CPU: {exc}") from None
            self._set_threads()
            return relax.VirtualMachine(executable, tvm.cpu())["main"]

        built = {tuple(tuple(declared[n]) for n in names): build(declared)}

        def run(inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            arrays = [np.ascontiguousarray(inputs[n]) for n in names]
            key = tuple(a.shape for a in arrays)
            main = built.get(key)
            if main is None:
                main = built[key] = build({n: list(a.shape) for n, a in zip(names, arrays)})
            out = main(*[tvm.runtime.tensor(a) for a in arrays])
            if isinstance(out, (list, tuple)) or type(out).__name__ in ("Array", "ADT", "Tuple"):
                return [o.numpy() for o in out]
            return [out.numpy()]

        return run


register_target(Target(
    name="tvm-llvm", backend="tvm", bit_options=((32, 32), (8, 8)),
    verify_backends=("ort", "openvino", "tvm"),
    description="this CPU through TVM (Relax, llvm target) compiling the QDQ ONNX file",
    lut_notes=("TVM Relax imports INT8 QDQ models and lowers Q/DQ to float arithmetic: INT8 entries time what "
               "TVM executes for a QDQ artifact (no INT8 kernels on the default schedule)",),
))
