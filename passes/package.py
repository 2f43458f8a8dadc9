"""Package: the artifact folder with model.onnx and a manifest of what was chosen, predicted and measured."""

from __future__ import annotations

from pathlib import Path

import onnx
from pydantic import Field

from bitnas.artifact import MODEL_FILE, Artifact, write_artifact
from bitnas.config import StrictModel
from bitnas.errors import UserError
from bitnas.fingerprint import library_versions
from bitnas.io import atomic_write_bytes, sha256_file
from bitnas.passes.export_onnx import QUANT_OPS, OnnxModel
from bitnas.pipeline import Pass, PassContext


def compact_model(src: Path, dst: Path) -> None:
    """Drop what the runtimes do not need: shape annotations, unused initializers, long names.

    Conv/Gemm nodes keep their layer names and the graph keeps its input and output names; every other
    tensor and node gets a short name. Zero points stay, even all-zero ones: ONNX Runtime's CPU provider
    fuses a Gemm's QDQ pattern only when its weight has one (without it the classifier runs in float).
    """
    m = onnx.load(str(src))
    g = m.graph
    del g.value_info[:]
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    fixed = {v.name for v in list(g.input) + list(g.output)}
    names: dict[str, str] = {}

    counter = iter(range(1 << 30))

    def short(name: str) -> str:
        if not name or name in fixed:
            return name
        if name not in names:
            new = f"t{next(counter)}"
            while new in fixed:  # never reuse a kept input or output name
                new = f"t{next(counter)}"
            names[name] = new
        return names[name]

    for t in g.initializer:
        t.name = short(t.name)
    for node in g.node:
        for i, x in enumerate(node.input):
            node.input[i] = short(x)
        for i, x in enumerate(node.output):
            node.output[i] = short(x)
        if node.op_type not in QUANT_OPS:
            node.name = ""
    onnx.checker.check_model(m)
    atomic_write_bytes(dst, m.SerializeToString())


VERSIONED = ("torch", "onnx", "onnxruntime", "openvino", "onnx-neural-compressor", "apache-tvm", "bitnas")


class Compact(Pass):
    """Drop shape annotations, unused initializers and long tensor names (``compact_model``): before Verify,
    so what Verify measures is the file Package ships."""

    def run(self, model: OnnxModel, ctx: PassContext) -> OnnxModel:
        out = ctx.workdir / "model.compact.onnx"
        compact_model(model.path, out)
        return OnnxModel(path=out, layers=model.layers, float_path=model.float_path)


def stored_parameter_bytes(path: Path) -> int:
    """Bytes the Conv/Gemm weights and biases of the ONNX model at ``path`` take as stored (packed INT4
    counted as stored): what the search's ``size_bytes`` predicts."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def stored(name: str) -> int:
        seen = 0
        while name not in inits and name in producers and seen < 4:  # through Cast and DequantizeLinear
            name, seen = producers[name].input[0], seen + 1
        t = inits.get(name)
        return len(t.raw_data) if t is not None and t.raw_data else (
            onnx.numpy_helper.to_array(t).nbytes if t is not None else 0)

    return sum(stored(n.input[i]) for n in model.graph.node if n.op_type in QUANT_OPS
               for i in (1, 2) if len(n.input) > i and n.input[i])


class Package(Pass):
    """Write ``model.onnx`` and ``manifest.json`` atomically into the artifact folder. The model must be the
    very file Verify measured (when the pipeline verified it): the manifest's figures are of what ships."""

    cacheable = False

    class Config(StrictModel):
        out: str | None = Field(None, description="artifact folder (relative to the work folder's parent); "
                                                 "default: the one the compile command chose")

    def run(self, model: OnnxModel, ctx: PassContext) -> Artifact:
        measured_sha = (ctx.results.get("measured") or {}).get("model_sha256")
        if measured_sha is not None and sha256_file(model.path) != measured_sha:
            raise UserError(f"{self.name}: {model.path} is not the model Verify measured (a pass after Verify "
                            "changed it); put Verify right before Package, so the manifest's figures are of "
                            "the file that ships")
        narrow = (ctx.results.get("quantization") or {}).get("activations_below_8_bits")
        if narrow and "activation_storage" not in ctx.results:
            raise UserError(f"{self.name}: layer(s) {narrow[:3]} ask for activations below 8 bits, which the static "
                            "quantizer wrote at 8; put SubByteActivations after the PTQ pass")
        candidate = ctx.need("candidate", self.name)
        chosen = self.config.out or ctx.results.get("artifact_dir") or "artifact"
        out = Path(chosen)
        if not out.is_absolute():
            out = ctx.workdir.parent / out
        r = ctx.results
        manifest = {
            "schema_version": None,  # set by write_artifact
            "candidate": candidate.to_dict(),
            "target": r.get("target", {"name": ctx.target}),
            "family": r.get("family", {}),
            "lut": r.get("lut", {}),
            "predicted": r.get("predicted", {}),
            "measured": r.get("measured", {}),
            "quantization": {**r.get("quantization", {}),
                             **({"weight_storage": r["weight_storage"]} if "weight_storage" in r else {}),
                             **({"activation_storage": r["activation_storage"]} if "activation_storage" in r else {})},
            "size_bytes_on_disk": model.path.stat().st_size,
            "parameter_bytes": stored_parameter_bytes(model.path),  # the search's size_bytes, as stored
            "size_bytes_on_disk_fp32": model.float_path.stat().st_size if model.float_path else None,
            "model": {"file": MODEL_FILE, "input": "input", "output": "logits", "layers": model.layers},
            # how a raw image becomes the model's input (what `bitnas run --image` applies); None if unknown
            "preprocess": pre.to_dict() if (pre := getattr(ctx.inputs.get("data"), "preprocess", None)) else None,
            "passes": [{"name": t.name, "seconds": round(t.seconds, 3)} for t in ctx.timings],
            "seed": ctx.seed,
            "versions": library_versions(VERSIONED),
            "files": {},
        }
        return write_artifact(out, model.path, manifest)
