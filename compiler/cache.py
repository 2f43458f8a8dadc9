"""Content-addressed cache of pass outputs.

A pass's output is stored under a key made of the pass's name, its config, the content hash of its input
and the context it reads (supernet weights, data, seed, target). Re-running a pipeline with one pass's
config changed therefore re-runs that pass and those whose input changed after it, and reuses the rest.
Each kind of value that flows between passes has a codec: how to hash it, store it and load it back.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from bitnas.errors import InternalError
from bitnas.io import atomic_write_json, sha256_file


def digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def tensor_digest(state: dict[str, Any]) -> str:
    """Hash of a state dict (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in state.items():
        arr = t.detach().cpu().contiguous().numpy() if hasattr(t, "detach") else np.asarray(t)
        h.update(f"{name}|{arr.dtype}|{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def array_digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class Codec(ABC):
    """How one kind of pass value is hashed, stored and restored."""

    kind: str = ""

    @abstractmethod
    def matches(self, value: Any) -> bool: ...

    @abstractmethod
    def digest(self, value: Any, ctx) -> str: ...

    @abstractmethod
    def save(self, value: Any, folder: Path, ctx) -> None: ...

    @abstractmethod
    def load(self, folder: Path, ctx) -> Any: ...


class CandidateCodec(Codec):
    kind = "candidate"

    def matches(self, value):
        from bitnas.space import Candidate

        return isinstance(value, Candidate)

    def digest(self, value, ctx):
        return value.id

    def save(self, value, folder, ctx):
        atomic_write_json(folder / "candidate.json", value.to_dict())

    def load(self, folder, ctx):
        from bitnas.space import Candidate

        return Candidate.from_dict(json.loads((folder / "candidate.json").read_text()))


class StaticNetCodec(Codec):
    """A static subnet is its candidate's structure plus a state dict (BatchNorm folded or not)."""

    kind = "static_net"

    def matches(self, value):
        from bitnas.supernets.static import StaticNet

        return isinstance(value, StaticNet)

    @staticmethod
    def _folded(value) -> bool:
        from bitnas.supernets.static import ConvUnit

        return any(isinstance(u, ConvUnit) and u.bn is None for u in value.units())

    def digest(self, value, ctx):
        cand = ctx.need("candidate", "the pass cache")
        return digest(cand.id, self._folded(value), tensor_digest(value.state_dict()))

    def save(self, value, folder, ctx):
        import torch

        torch.save(value.state_dict(), folder / "state.pt")
        atomic_write_json(folder / "net.json", {"candidate": ctx.need("candidate", "the pass cache").to_dict(),
                                                "folded": self._folded(value)})

    def load(self, folder, ctx):
        import torch

        from bitnas.space import Candidate
        from bitnas.supernets.static import fold_bn

        meta = json.loads((folder / "net.json").read_text())
        net = ctx.need("supernet", "the pass cache").extract(Candidate.from_dict(meta["candidate"]))
        if meta["folded"]:
            net = fold_bn(net)
        net.load_state_dict(torch.load(folder / "state.pt", map_location="cpu", weights_only=True))
        return net.eval()


class OnnxModelCodec(Codec):
    kind = "onnx_model"

    def matches(self, value):
        from bitnas.passes.export_onnx import OnnxModel

        return isinstance(value, OnnxModel)

    def digest(self, value, ctx):
        fp = sha256_file(value.float_path) if value.float_path else None
        return digest(sha256_file(value.path), fp, value.layers)

    def save(self, value, folder, ctx):
        shutil.copyfile(value.path, folder / "model.onnx")
        if value.float_path:
            shutil.copyfile(value.float_path, folder / "float.onnx")
        atomic_write_json(folder / "onnx.json", {"layers": value.layers, "has_float": bool(value.float_path)})

    def load(self, folder, ctx):
        from bitnas.passes.export_onnx import OnnxModel

        meta = json.loads((folder / "onnx.json").read_text())
        return OnnxModel(path=folder / "model.onnx", layers=meta["layers"],
                         float_path=(folder / "float.onnx") if meta["has_float"] else None)


CODECS: list[Codec] = [CandidateCodec(), StaticNetCodec(), OnnxModelCodec()]


def codec_for(value: Any) -> Codec | None:
    return next((c for c in CODECS if c.matches(value)), None)


def codec_by_kind(kind: str) -> Codec:
    for c in CODECS:
        if c.kind == kind:
            return c
    raise InternalError(f"no cache codec for '{kind}'")


class PassCache:
    """A folder of entries ``<key>/{meta.json, payload files}``, each written atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        folder = self.root / key
        meta = folder / "meta.json"
        if not meta.is_file():
            return None
        try:
            return folder, json.loads(meta.read_text())
        except json.JSONDecodeError:
            return None

    def put(self, key: str, value: Any, results: dict[str, Any], ctx) -> None:
        codec = codec_for(value)
        if codec is None:
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=self.root))
        try:
            codec.save(value, tmp, ctx)
            atomic_write_json(tmp / "meta.json", {"kind": codec.kind, "results": results})
            dest = self.root / key
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
