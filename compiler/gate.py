"""The CI benchmark gate: compare an artifact's measured figures with a committed baseline.

Latency is compared as the ratio of the artifact's latency to its own FP32 export measured in the same
run, so the machine's speed of the day cancels out; size on disk and accuracy are compared directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnas.errors import ArtifactError


@dataclass(frozen=True)
class Tolerance:
    latency: float = 0.10  # relative increase of the latency ratio to FP32
    size: float = 0.02  # relative increase of the size on disk
    accuracy: float = 0.01  # absolute drop of top-1 accuracy


@dataclass
class Check:
    what: str
    baseline: float
    current: float
    limit: float
    regressed: bool


def load_figures(path: str | Path) -> dict[str, Any]:
    """Gate figures from a manifest.json (or a file holding one under 'manifest')."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    man = data.get("manifest", data) if isinstance(data, dict) else None
    if not isinstance(man, dict) or "measured" not in man:
        raise ArtifactError(f"{path}: no 'measured' section (expected an artifact manifest)")
    measured = man["measured"]
    backends = {k: v for k, v in measured.items() if isinstance(v, dict) and "latency_ratio_to_fp32" in v}
    if not backends:
        raise ArtifactError(f"{path}: 'measured' has no backend with a latency_ratio_to_fp32")
    size = man.get("size_bytes_on_disk")
    if not isinstance(size, (int, float)):
        raise ArtifactError(f"{path}: missing numeric 'size_bytes_on_disk'")
    return {"candidate": man.get("candidate", {}).get("id"), "size": float(size),
            "accuracy": {b: float(v["accuracy"]) for b, v in backends.items()},
            "ratio": {b: float(v["latency_ratio_to_fp32"]) for b, v in backends.items()}}


def compare(baseline: dict[str, Any], current: dict[str, Any], tol: Tolerance = Tolerance()) -> list[Check]:
    checks = []
    for b in sorted(set(baseline["ratio"]) & set(current["ratio"])):
        base, cur = baseline["ratio"][b], current["ratio"][b]
        limit = base * (1 + tol.latency)
        checks.append(Check(f"{b} latency / fp32", base, cur, limit, cur > limit))
        base, cur = baseline["accuracy"][b], current["accuracy"][b]
        limit = base - tol.accuracy
        checks.append(Check(f"{b} accuracy", base, cur, limit, cur < limit))
    base, cur = baseline["size"], current["size"]
    limit = base * (1 + tol.size)
    checks.append(Check("size on disk (bytes)", base, cur, limit, cur > limit))
    return checks
