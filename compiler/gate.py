"""The CI benchmark gate: compare an artifact's measured figures with a committed baseline.

Latency is compared as the ratio of the artifact's latency to its own FP32 export measured in the same
run, so the machine's speed of the day cancels out; size on disk and accuracy are compared directly.
"""

from __future__ import annotations

import json
import math
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


def _number(value: Any, where: str, lo: float = 0.0, hi: float = math.inf, lo_open: bool = True) -> float:
    """A finite number in range (``lo`` excluded when ``lo_open``); a boolean, NaN or infinity is refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bound = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if math.isfinite(hi) else "")
        raise ArtifactError(f"{where} is {value!r}; the gate needs a finite number {bound}")
    return float(value)


def _check_files(path: Path, man: dict[str, Any]) -> None:
    """When the manifest sits in its artifact folder, every file it lists must have its sha256 (a copy of a
    manifest, e.g. a committed baseline, has no files beside it and is taken as it is)."""
    files = man.get("files")
    if not isinstance(files, dict):
        return
    from bitnas.io import sha256_file

    for name, entry in files.items():
        f = path.parent / str(name)
        if f.name != str(name) or not f.is_file() or f.name == path.name:
            continue
        want = entry.get("sha256") if isinstance(entry, dict) else None
        if sha256_file(f) != want:
            raise ArtifactError(f"{f}: sha256 does not match {path} (the file changed after it was measured)")


def load_figures(path: str | Path) -> dict[str, Any]:
    """Gate figures from a manifest.json (or a file holding one under 'manifest'); every figure finite and in
    range, and the files beside an artifact's manifest unchanged."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read ({exc.strerror})") from None
    man = data.get("manifest", data) if isinstance(data, dict) else None
    if not isinstance(man, dict) or "measured" not in man:
        raise ArtifactError(f"{path}: no 'measured' section (expected an artifact manifest)")
    measured = man["measured"]
    if not isinstance(measured, dict):
        raise ArtifactError(f"{path}: 'measured' must be an object, not {type(measured).__name__}")
    backends = {k: v for k, v in measured.items() if isinstance(v, dict) and "latency_ratio_to_fp32" in v}
    if not backends:
        raise ArtifactError(f"{path}: 'measured' has no backend with a latency_ratio_to_fp32")
    if "size_bytes_on_disk" not in man:
        raise ArtifactError(f"{path}: missing numeric 'size_bytes_on_disk'")
    size = _number(man["size_bytes_on_disk"], f"{path}: 'size_bytes_on_disk'")
    _check_files(path, man)
    m = "measured"
    candidate = man.get("candidate")
    return {"candidate": candidate.get("id") if isinstance(candidate, dict) else None, "size": size,
            "accuracy": {b: _number(v.get("accuracy"), f"{path}: '{m}.{b}.accuracy'", 0.0, 1.0, lo_open=False)
                         for b, v in backends.items()},
            "ratio": {b: _number(v["latency_ratio_to_fp32"], f"{path}: '{m}.{b}.latency_ratio_to_fp32'")
                      for b, v in backends.items()}}


def compare(baseline: dict[str, Any], current: dict[str, Any], tol: Tolerance = Tolerance()) -> list[Check]:
    """One check per figure; a backend the baseline measured and the current manifest lacks fails closed."""
    for name in ("latency", "size", "accuracy"):
        _number(getattr(tol, name), f"--{name}-tol", lo_open=False)
    checks = [Check(f"{b} measured", baseline["ratio"][b], math.nan, math.nan, True)
              for b in sorted(set(baseline["ratio"]) - set(current["ratio"]))]
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
