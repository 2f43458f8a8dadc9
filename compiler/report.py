"""``bitnas report RUN``: one self-contained HTML page of a run folder, for people to read.

The page holds the search's front (accuracy against latency, energy or size), hypervolume against
evaluations, the per-layer bit widths of the front, the LUT's predicted-against-measured latency (when
``bitnas lut validate --project`` was run), the compiled artifact's per-unit latency breakdown from the LUT,
and its manifest. Plots are inline PNGs and the style is inline: the file opens anywhere, offline, and
loads nothing.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bitnas.errors import UserError


def _png(fig) -> str:
    from bitnas.plots import figure_png

    fig.tight_layout()
    return _img(figure_png(fig, dpi=100))


def _img(data: bytes, alt: str = "plot") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _table(rows: list[list[Any]], head: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            v = f"{v:.4g}"
        return f"<td>{html.escape(str(v))}</td>"

    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows]
    return "\n".join(out) + "</table>"


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc})") from None


def _hv_history(evals: list[dict], objectives: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Hypervolume of the evaluations so far, in evaluation order, each objective normalized to the range
    the evaluations span (ideal 0, reference 1.1)."""
    from bitnas.searchers import hypervolume, non_dominated

    F = np.array([[e["objectives"][o["name"]] * (1 if o["sense"] == "min" else -1) for o in objectives]
                  for e in evals], float)
    lo, hi = F.min(0), F.max(0)
    Z = (F - lo) / np.where(hi > lo, hi - lo, 1.0)
    ref = np.full(F.shape[1], 1.1)
    hv = [hypervolume(Z[:i + 1][non_dominated(Z[:i + 1])], ref) for i in range(len(Z))]
    return np.arange(1, len(Z) + 1), np.array(hv)


def build_report(run: Path) -> str:
    """The HTML page of the run folder ``run``."""
    from bitnas.plots import front_png
    from bitnas.project import Project

    project = Project.load(run)
    rf = project.run
    if not rf.search_json.is_file():
        raise UserError(f"{rf.search_json}: no search result in this run folder (run `bitnas search` first)")
    search = _read_json(rf.search_json, "search result")
    evals = search.get("evaluations") if isinstance(search, dict) else None
    objectives = search.get("objectives") if isinstance(search, dict) else None
    if not isinstance(evals, list) or not evals or not isinstance(objectives, list):
        raise UserError(f"{rf.search_json}: holds no evaluations")
    cfg = project.cfg
    parts = [f"<h1>bitnas run {html.escape(str(rf.root))}</h1>",
             _table([["family", project.family.name], ["space", cfg.family.space], ["target", project.target.name],
                     ["searcher", cfg.search.searcher], ["evaluations", len(evals)],
                     ["objectives", ", ".join(f"{o['name']} ({o['sense']})" for o in objectives)]],
                    ["", "project"])]

    # the front
    objs = [SimpleNamespace(name=o["name"], sense=o["sense"]) for o in objectives]
    records = [SimpleNamespace(objectives=e["objectives"], candidate=SimpleNamespace(id=e["id"])) for e in evals]
    front = [e for e in evals if e.get("on_front")]
    parts += ["<h2>Pareto front</h2>",
              _img(front_png(records, {e["id"] for e in front}, objs, f"{len(evals)} evaluations, {len(front)} on "
                                                                     "the front"), "Pareto front")]
    plt = _plt()

    # hypervolume against evaluations
    n, hv = _hv_history(sorted(evals, key=lambda e: e.get("seq", 0)), objectives)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(n, hv, marker=".")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("hypervolume (normalized)")
    ax.set_title("each objective scaled to the range the evaluations span", fontsize=9)
    parts += ["<h2>Hypervolume against evaluations</h2>", _png(fig)]

    # per-layer bits of the front
    supernet = project.build_supernet()
    space = supernet.space
    front_sorted = sorted(front, key=lambda e: e["objectives"][objectives[-1]["name"]])
    cands = [space.validate(_candidate(e)) for e in front_sorted]
    names = [s.name for s in supernet.layers(space.largest()) if s.name in {g.name for g in space.policy_genes}]
    M = np.full((len(cands), len(names)), np.nan)
    for i, c in enumerate(cands):
        active = {s.name: s for s in supernet.layers(c)}
        for j, name in enumerate(names):
            if name in active:
                M[i, j] = active[name].w_bits
    if len(cands):
        fig, ax = plt.subplots(figsize=(min(14, 2 + 0.18 * len(names)), 1.2 + 0.35 * len(cands)))
        shown = np.where(M >= 32, 16, M)  # float on the scale's top
        im = ax.imshow(shown, aspect="auto", cmap="viridis", vmin=2, vmax=16, interpolation="nearest")
        ax.set_yticks(range(len(cands)), [c.id[:8] for c in cands], fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        cb = fig.colorbar(im, ax=ax)
        cb.set_label("weight bits (16 = float)")
        ax.set_title(f"front candidates by {objectives[-1]['name']}; blank: layer not in the architecture",
                     fontsize=9)
        parts += ["<h2>Bit widths of the front</h2>", _png(fig)]

    # the LUT against measurement
    parts.append("<h2>LUT: predicted against measured latency</h2>")
    if rf.lut_validate.is_file():
        v = _read_json(rf.lut_validate, "LUT validation")
        subs = v.get("subnets") or []
        pred = np.array([s["predicted_ms"] for s in subs], float)
        meas = np.array([s["measured_ms"] for s in subs], float)
        sd = np.array([s.get("predicted_sd_ms", 0.0) for s in subs], float)
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.errorbar(meas, pred, yerr=2 * sd, fmt="o", ms=4, label="subnet (2 sigma)")
        lim = [0, max(1e-9, float(max(pred.max(initial=0), meas.max(initial=0)))) * 1.08]
        ax.plot(lim, lim, "k-", lw=1, label="y = x")
        ax.set_xlabel("measured latency (ms)")
        ax.set_ylabel("predicted latency (ms, LUT)")
        ax.legend()
        ax.set_title(f"MAPE {v.get('mape', float('nan')):.1f}%, tau {v.get('kendall_tau', float('nan')):.2f}, "
                     f"within 10% {v.get('within_10pct', float('nan')):.2f}", fontsize=9)
        parts.append(_png(fig))
    else:
        parts.append("<p>Not measured: run <code>bitnas lut validate --project RUN --lut RUN/lut.json</code>.</p>")

    # the chosen artifact
    arts = sorted((p for p in rf.artifacts.glob("*/manifest.json")), key=lambda p: p.stat().st_mtime) \
        if rf.artifacts.is_dir() else []
    parts.append("<h2>Artifact</h2>")
    if not arts:
        parts.append("<p>None compiled yet: run <code>bitnas compile --project RUN</code>.</p>")
    else:
        man = _read_json(arts[-1], "manifest")
        cand = space.validate(_candidate(man["candidate"]))
        parts.append(f"<p>{html.escape(str(arts[-1].parent))}: candidate <b>{html.escape(cand.id)}</b></p>")
        if rf.lut.is_file():
            from bitnas.latency_luts import LatencyTable

            costs = LatencyTable.load(rf.lut).unit_costs(supernet.layers(cand))
            labels = [c["unit"][0].name if len(c["unit"]) == 1 else c["unit"][0].name.rpartition(".")[0]
                      for c in costs]
            ms = [c["latency_ms"] for c in costs]
            colour = ["tab:orange" if all(s.w_bits < 32 for s in c["unit"]) else
                      "tab:blue" if all(s.w_bits >= 32 for s in c["unit"]) else "tab:green" for c in costs]
            fig, ax = plt.subplots(figsize=(7, 0.6 + 0.22 * len(costs)))
            ax.barh(range(len(costs)), ms, color=colour)
            ax.set_yticks(range(len(costs)), labels, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel("predicted latency (ms, LUT; orange quantized, blue float, green mixed)")
            parts.append(_png(fig))
        rows = []
        for b, m in (man.get("measured") or {}).items():
            if isinstance(m, dict) and "latency_ms" in m:
                rows.append([b, m.get("accuracy"), m.get("accuracy_fp32"), m.get("latency_ms"),
                             m.get("latency_ms_fp32"), m.get("latency_ratio_to_fp32"),
                             m.get("top1_agreement_vs_fakequant", "")])
        parts.append(_table(rows, ["backend", "accuracy", "accuracy fp32", "latency ms", "latency fp32 ms",
                                   "ratio", "agreement vs simulation"]))
        pred = man.get("predicted") or {}
        parts.append(_table([[k, v] for k, v in pred.items()], ["predicted", "value"]))
        parts.append("<details><summary>manifest.json</summary><pre>" + html.escape(json.dumps(man, indent=1)) +
                     "</pre></details>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
             "font-size:13px}img{max-width:100%}pre{font-size:11px;background:#f6f6f6;padding:.5em}")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>bitnas report</title>"
            f"<style>{style}</style></head><body>" + "\n".join(parts) + "</body></html>\n")


def _candidate(rec: dict):
    from bitnas.space import Candidate

    return Candidate.from_dict({"arch": rec.get("arch", {}), "policy": rec.get("policy", {})})


def write_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run`` (default: ``RUN/report.html``) atomically; returns its path."""
    from bitnas.io import atomic_write_bytes
    from bitnas.project import Project

    run = Path(run)
    page = build_report(run)
    path = Path(out) if out else Project.load(run).run.report
    atomic_write_bytes(path, page.encode())
    return path
