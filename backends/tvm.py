"""Apache TVM (Relax) compiled for this CPU with LLVM: -mcpu and AVX-512/VNNI features are detected.

ONNX models (float or INT8 QDQ) are imported with Relax's ONNX frontend and built for the host. Relax
lowers QuantizeLinear/DequantizeLinear to float arithmetic (it has no INT8 convolution kernels on the
default CPU schedule), so an INT8 QDQ model runs, and is timed, as TVM really executes it.

The frontend cannot import ONNX's 4-bit tensor types, so a packed-INT4 artifact (SubByteWeights) is
widened in memory first (``widen_int4``): TVM runs its INT8-storage equivalent, the same weight values and
scales, hence the same numbers, in twice the weight memory; the file on disk stays INT4. A 4-bit tensor
used otherwise (a graph input or output, an activation, a Cast to a 4-bit type) is refused with
``UnsupportedBackendError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from bitnas.api import CPU_BITS, Target
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


def _four_bit_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors of ``model`` with a 4-bit type: graph inputs and outputs, activations, initializers,
    outputs of a Cast or Constant."""
    bad = {getattr(TensorProto, t) for t in _4BIT if hasattr(TensorProto, t)}

    def typed(graph: onnx.GraphProto) -> list[str]:
        return [vi.name for vi in (*graph.input, *graph.output, *graph.value_info)
                if vi.type.tensor_type.elem_type in bad]

    names = [t.name for t in model.graph.initializer if t.data_type in bad]
    for node in model.graph.node:
        for attr in node.attribute:
            if (attr.name in ("to", "output_dtype") and attr.i in bad) or attr.t.data_type in bad:
                names.extend(node.output[:1] or [node.name or node.op_type])
    if not names and not typed(model.graph):
        return []
    try:  # types every activation, so a 4-bit one is named even where the file declares no type for it
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - an uninferable graph is named as it is declared
        graph = model.graph
    return list(dict.fromkeys(typed(graph) + names))


# ops whose default-domain versions 18 to 21 only added tensor types and attributes (_fits_opset17 checks both)
_TYPES_ADDED_AFTER_17 = {"Cast", "CastLike", "Constant", "ConstantOfShape", "DequantizeLinear", "Equal",
                         "Flatten", "Identity", "QuantizeLinear", "Reshape", "Shape", "Size", "Squeeze",
                         "Transpose", "Unsqueeze"}


def _fits_opset17(model: onnx.ModelProto) -> bool:
    """Whether ``model`` reads the same at default-domain opset 17: each op is there with the same meaning
    and the attributes it uses, no tensor has a later type (4-bit, float8), every Q/DQ scale is float32."""
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 17)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    types = [t.data_type for t in graph.initializer]
    types += [vi.type.tensor_type.elem_type for vi in (*graph.input, *graph.output, *graph.value_info)
              if vi.type.HasField("tensor_type")]
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            old, new = onnx.defs.get_schema(node.op_type, 17), onnx.defs.get_schema(node.op_type, opset)
        except onnx.defs.SchemaError:
            return False
        if new.since_version != old.since_version and node.op_type not in _TYPES_ADDED_AFTER_17:
            return False
        if any(a.name not in old.attributes for a in node.attribute):
            return False
        types += [a.i for a in node.attribute if a.name == "to"]
        types += [a.t.data_type for a in node.attribute if a.HasField("t")]
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale = inits.get(node.input[1])
            if scale is None or scale.data_type != TensorProto.FLOAT:
                return False  # opset 17 takes float32 scales only (a computed one's type is not known here)
    return all(t <= TensorProto.BFLOAT16 for t in types)  # the types after it came with opset 19 and later


def widen_int4(model: onnx.ModelProto) -> onnx.ModelProto:
    """The INT8-storage equivalent of a packed-INT4 model, as a new model (``model`` is not changed).

    Each INT4 (UINT4) initializer read only as a DequantizeLinear's data or zero point becomes INT8 (UINT8)
    with the same values. Where such a DequantizeLinear has a float16 scale and its output is read only by
    Cast(to=FLOAT), as SubByteWeights writes it, the scale becomes float32 (exactly) and the Cast goes: the
    weight is the same float32 tensor. Then the default-domain opset, which SubByteWeights raised from 17 to
    21 for these types, goes back to 17 if nothing else needs a later one (``_fits_opset17``). Other 4-bit
    tensors are left as they are, for the caller to refuse.
    """
    widened = {TensorProto.INT4: np.int8, TensorProto.UINT4: np.uint8}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    only_dq = set()  # tensors some node reads other than as a DequantizeLinear's data or zero point
    for node in graph.node:
        for k, name in enumerate(node.input):
            readers.setdefault(name, []).append(node)
            if node.op_type != "DequantizeLinear" or k == 1:
                only_dq.add(name)
    ends = {vi.name for vi in (*graph.input, *graph.output)}
    wide = {name for name, t in inits.items() if t.data_type in widened and name not in ends | only_dq}
    dqs = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    pairs = [{x for x in (n.input[0], n.input[2] if len(n.input) > 2 else "") if x} for n in dqs]
    while True:  # a DequantizeLinear's data and zero point share one type: both are widened or neither
        split = set().union(*(p & wide for p in pairs if p & wide and not p <= wide))
        if not split:
            break
        wide -= split
    if not wide:
        return out
    for name in wide:
        t = inits[name]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(widened[t.data_type]), name))
    for vi in graph.value_info:
        if vi.name in wide:
            vi.type.tensor_type.elem_type = inits[vi.name].data_type

    taken = set(inits) | {o for n in graph.node for o in n.output} | ends
    singles: dict[str, str] = {}  # float16 scale -> its float32 copy
    casts = []
    for dq in (n for n in dqs if n.input[0] in wide):
        scale, after = inits.get(dq.input[1]), readers.get(dq.output[0], [])
        if scale is None or scale.data_type != TensorProto.FLOAT16 or scale.name in ends:
            continue
        if dq.output[0] in ends or not after or not all(_casts_to_float(n) for n in after):
            continue
        if scale.name not in singles:
            name = f"{scale.name}_f32"
            while name in taken:
                name += "_"
            taken.add(name)
            singles[scale.name] = name
            single = numpy_helper.to_array(scale).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(single, name))
        dq.input[1] = singles[scale.name]
        declared = [vi for vi in graph.value_info if vi.name == dq.output[0]]
        if len(after) == 1:  # the DequantizeLinear writes the Cast's output itself
            casts.append(after[0])
            dq.output[0] = after[0].output[0]
            for vi in declared:
                graph.value_info.remove(vi)
        else:  # the Casts stay, from float32 to float32
            for vi in declared:
                vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for cast in casts:
        graph.node.remove(cast)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name in singles and t.name not in used]:
        graph.initializer.remove(t)
    if _fits_opset17(out):
        for imp in out.opset_import:
            if imp.domain in ("", "ai.onnx") and imp.version > 17:
                imp.version = 17
    return out


# ops whose output, when every input is a constant, is folded before TVM imports a model: the exporter's
# shape arithmetic (the pads of ``F.pad`` arrive as such a chain, and TVM's frontend takes only constant pads)
_FOLDABLE = frozenset({"Constant", "ConstantOfShape", "Concat", "Reshape", "Slice", "Transpose", "Cast",
                       "Unsqueeze", "Squeeze", "Gather", "Range"})


def fold_constant_chains(model: onnx.ModelProto) -> int:
    """Replace, in place, each node of ``_FOLDABLE`` whose inputs are all constants by an initializer of its
    output, repeatedly; return how many nodes went. Quantization nodes are never folded, nor a node the
    reference evaluator cannot compute (the model is left as it was there)."""
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    folded, changed = 0, True
    while changed:
        changed = False
        for node in list(g.node):
            if node.op_type not in _FOLDABLE or not all(i in consts for i in node.input if i):
                continue
            inputs = [i for i in node.input if i]
            sub = onnx.helper.make_model(
                onnx.helper.make_graph([node], "fold", [onnx.helper.make_tensor_value_info(
                    i, onnx.helper.np_dtype_to_tensor_dtype(consts[i].dtype), consts[i].shape) for i in inputs],
                    [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output]),
                opset_imports=model.opset_import)
            try:
                values = ReferenceEvaluator(sub).run(None, {i: consts[i] for i in inputs})
            except Exception:  # noqa: BLE001 - left for TVM's frontend, which names what it cannot import
                continue
            for name, value in zip(node.output, values):
                consts[name] = np.asarray(value)
                g.initializer.append(numpy_helper.from_array(consts[name], name))
            g.node.remove(node)
            folded += 1
            changed = True
    return folded


def _casts_to_float(node: onnx.NodeProto) -> bool:
    return node.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT for a in node.attribute)


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
        if _four_bit_tensors(model):
            model = widen_int4(model)  # packed-INT4 weights run as their INT8-storage equivalent
            four = _four_bit_tensors(model)
            if four:
                raise UnsupportedBackendError(
                    f"{onnx_path}: TVM's ONNX frontend cannot import 4-bit tensor types (INT4/UINT4), used "
                    f"by '{four[0]}' (only 4-bit weights read by DequantizeLinear are widened to INT8 for "
                    f"it); run this model on 'ort' or 'openvino'")
        fold_constant_chains(model)
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
    name="tvm-llvm", backend="tvm", bit_options=CPU_BITS,
    verify_backends=("ort", "openvino", "tvm"),
    description="this CPU through TVM (Relax, llvm target) compiling the QDQ ONNX file",
    lut_notes=("TVM Relax imports INT8 QDQ models and lowers Q/DQ to float arithmetic: INT8 entries time what "
               "TVM executes for a QDQ artifact (no INT8 kernels on the default schedule)",),
))
