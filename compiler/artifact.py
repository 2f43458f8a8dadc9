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


def write_artifact(root: str | Path, model_path: Path, manifest: dict[str, Any],
                   extra_files: dict[str, Path] | None = None) -> Artifact:
    """Build the artifact in a temporary sibling folder, then swap it in; an old artifact survives a failure."""
    root = Path(root)
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
            old = root.with_name(f".{root.name}.old")
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
