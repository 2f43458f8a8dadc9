"""Package: the artifact folder with model.onnx and a manifest of what was chosen, predicted and measured."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from bitnas.artifact import MODEL_FILE, Artifact, write_artifact
from bitnas.config import StrictModel
from bitnas.fingerprint import library_versions
from bitnas.passes.export_onnx import OnnxModel
from bitnas.pipeline import Pass, PassContext

VERSIONED = ("torch", "onnx", "onnxruntime", "openvino", "onnx-neural-compressor", "apache-tvm", "bitnas")


class Package(Pass):
    """Write ``model.onnx`` and ``manifest.json`` atomically into the artifact folder."""

    class Config(StrictModel):
        out: str = Field("artifact", description="artifact folder (relative to the work folder's parent)")

    def run(self, model: OnnxModel, ctx: PassContext) -> Artifact:
        candidate = ctx.need("candidate", self.name)
        out = Path(self.config.out)
        if not out.is_absolute():
            out = ctx.workdir.parent / out
        r = ctx.results
        manifest = {
            "schema_version": None,  # set by write_artifact
            "candidate": candidate.to_dict(),
            "target": r.get("target", {"name": ctx.target}),
            "lut": r.get("lut", {}),
            "predicted": r.get("predicted", {}),
            "measured": r.get("measured", {}),
            "quantization": r.get("quantization", {}),
            "size_bytes_on_disk": model.path.stat().st_size,
            "size_bytes_on_disk_fp32": model.float_path.stat().st_size if model.float_path else None,
            "model": {"file": MODEL_FILE, "input": "input", "output": "logits", "layers": model.layers},
            "passes": [{"name": t.name, "seconds": round(t.seconds, 3)} for t in ctx.timings],
            "seed": ctx.seed,
            "versions": library_versions(VERSIONED),
            "files": {},
        }
        return write_artifact(out, model.path, manifest)
