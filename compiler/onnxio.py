"""Loading and checking ONNX files with errors that name the file at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from bitnas.errors import ArtifactError


def load_onnx(path: str | Path, check: bool = True) -> onnx.ModelProto:
    """Load ``path`` as an ONNX model; external data must stay inside the model's folder."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for garbage
        raise ArtifactError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node and not model.graph.output:
        raise ArtifactError(f"{path}: not an ONNX model (no graph)")
    root = path.parent.resolve()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
            target = (root / loc).resolve()
            if root not in target.parents:
                raise ArtifactError(f"{path}: external data '{loc}' of '{tensor.name}' escapes the model folder")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        onnx.load_external_data_for_model(model, str(root))
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            raise ArtifactError(f"{path}: invalid ONNX model: {str(exc).splitlines()[0]}") from None
    return model


def input_names(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def load_array(path: str | Path) -> np.ndarray:
    """A ``.npy`` input array; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: input file not found")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"{path}: not a .npy array ({exc})") from None
