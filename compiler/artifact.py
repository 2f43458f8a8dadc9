"""Artifact: a folder holding ``model.onnx`` and ``manifest.json`` (with a sha256 for every file)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnas.errors import ArtifactError
from bitnas.io import atomic_write_json, current_umask, sha256_file

SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
REQUIRED_KEYS = ("schema_version", "candidate", "target", "lut", "predicted", "measured", "files", "versions")


@dataclass
class Artifact:
    root: Path
    manifest: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.root / MODEL_FILE

    @staticmethod
    def load(root: str | Path, verify_checksums: bool = True) -> Artifact:
        """Open an artifact folder; errors name the missing, malformed or tampered file."""
        root = Path(root)
        if not root.is_dir():
            raise ArtifactError(f"{root}: artifact folder not found")
        mpath = root / MANIFEST_FILE
        if not mpath.is_file():
            raise ArtifactError(f"{mpath}: manifest file missing")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{mpath}: not valid JSON ({exc})") from None
        if not isinstance(manifest, dict):
            raise ArtifactError(f"{mpath}: top level must be an object")
        missing = [k for k in REQUIRED_KEYS if k not in manifest]
        if missing:
            raise ArtifactError(f"{mpath}: missing key(s) {missing}")
        if manifest["schema_version"] != SCHEMA_VERSION:
            raise ArtifactError(f"{mpath}: schema_version {manifest['schema_version']} (this bitnas reads {SCHEMA_VERSION})")
        _check_manifest(manifest, mpath)
        art = Artifact(root, manifest)
        if verify_checksums:
            art.verify_checksums()
        return art

    def verify_checksums(self) -> None:
        files = self.manifest.get("files", {})
        if MODEL_FILE not in files:
            raise ArtifactError(f"{self.root / MANIFEST_FILE}: 'files' lists no {MODEL_FILE}")
        for name, info in files.items():
            path = (self.root / name).resolve()
            if self.root.resolve() not in path.parents:
                raise ArtifactError(f"{self.root / MANIFEST_FILE}: file entry '{name}' escapes the artifact folder")
            if not path.is_file():
                raise ArtifactError(f"{self.root / name}: listed in the manifest but missing")
            if sha256_file(path) != info.get("sha256"):
                raise ArtifactError(f"{self.root / name}: sha256 does not match the manifest (file changed)")


def _check_manifest(m: dict[str, Any], mpath: Path) -> None:
    """The parts of a manifest the commands read have the types they read: one error naming the field."""
    for key in ("candidate", "target", "lut", "predicted", "measured", "files", "versions"):
        if not isinstance(m[key], dict):
            raise ArtifactError(f"{mpath}: '{key}' must be an object, not {type(m[key]).__name__}")
    c = m["candidate"]
    if not isinstance(c.get("id"), str) or not isinstance(c.get("arch"), dict) or not isinstance(c.get("policy"), dict):
        raise ArtifactError(f"{mpath}: 'candidate' must hold a string 'id' and objects 'arch' and 'policy'")
    for name, info in m["files"].items():
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
            raise ArtifactError(f"{mpath}: 'files.{name}' must be an object with a string 'sha256'")
    model = m.get("model")
    if model is not None and not (isinstance(model, dict) and all(
            isinstance(model.get(k, ""), str) for k in ("file", "input", "output"))
            and isinstance(model.get("layers", []), list)):
        raise ArtifactError(f"{mpath}: 'model' must be an object with string 'file', 'input', 'output' and a "
                            "list 'layers'")
    pre = m.get("preprocess")
    if pre is not None and not isinstance(pre, dict):
        raise ArtifactError(f"{mpath}: 'preprocess' must be an object or null")


def _replaceable(root: Path) -> str | None:
    """Why ``root`` must not be replaced by an artifact (None: it is absent, empty, or a bitnas artifact
    holding nothing but the files its manifest lists)."""
    if not root.exists():
        return None
    if not root.is_dir():
        return "it is a file"
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        return None
    try:
        manifest = json.loads((root / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return f"it holds {entries[0]!r} and no bitnas manifest"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or "schema_version" not in manifest:
        return "its manifest.json is not a bitnas artifact manifest"
    extra = [e for e in entries if e != MANIFEST_FILE and e not in files]
    return f"it holds {extra[0]!r}, which its manifest does not list" if extra else None


def write_artifact(root: str | Path, model_path: Path, manifest: dict[str, Any],
                   extra_files: dict[str, Path] | None = None) -> Artifact:
    """Build the artifact in a temporary sibling folder, then swap it in; an old artifact survives a failure.

    Only an earlier bitnas artifact (or an empty folder) is replaced: any other folder, or an artifact a
    user added files to, is refused by name and left as it is. A swap a kill interrupted (the old artifact
    moved aside, the new one not yet in place) is completed from the old one first.
    """
    root = Path(root)
    old = root.with_name(f".{root.name}.old")
    if not root.exists() and old.is_dir() and _replaceable(old) is None:
        old.rename(root)  # an interrupted swap: the previous artifact goes back first
    why = _replaceable(root)
    if why is not None:
        raise ArtifactError(f"{root}: will not replace this folder with an artifact: {why}; choose another "
                            "output folder or move it away")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())
        shutil.copyfile(model_path, tmp / MODEL_FILE)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
        manifest = {**manifest, "schema_version": SCHEMA_VERSION, "files": files}
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
        if root.exists():
            if old.exists():
                shutil.rmtree(old)
            root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old)
        else:
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(root, manifest)
