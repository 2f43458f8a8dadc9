"""BitFusion model fidelity: bitnas's ``edge`` preset against rows of the released BitFusion simulator.

Scores every single-layer row (cycles, stall cycles, DRAM bits, energy total and core / buffers / DRAM)
and every network row (per layer and totals; layers simulated one by one at the row's batch, im2col
chosen by bitnas's own first-layer rule) of a reference file, writes JSON and a log-log plot.

    python benchmarks/bitfusion_fidelity.py --reference /work/shared/bitfusion/reference.json \
        --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

CYCLES_TOL, ENERGY_TOL = 0.10, 0.15
# Rows whose numbers were read while the model's equations were worked out from the notes (the SRAM read
# counts and the output-buffer traffic are only sketched in the notes, so they were checked on these);
# every other row and all network rows were first looked at when this benchmark ran.
DEV_ROWS = {
    ("conv", 3, 32, 1, 3, 64, 8, 8, 1, False), ("conv", 3, 32, 1, 64, 64, 4, 4, 1, False),
    ("conv", 3, 32, 1, 64, 64, 2, 8, 1, False), ("conv", 3, 8, 2, 64, 128, 8, 8, 1, False),
    ("conv", 3, 7, 1, 512, 512, 4, 4, 1, False), ("conv", 3, 7, 1, 512, 512, 2, 8, 1, False),
    ("conv", 3, 7, 1, 512, 512, 2, 8, 16, False), ("conv", 3, 32, 1, 3, 64, 2, 2, 1, True),
    ("conv", 3, 32, 1, 3, 64, 4, 8, 1, True), ("fc", 1, 1, 1, 1024, 1024, 8, 8, 1, False),
    ("fc", 1, 1, 1, 512, 10, 4, 4, 1, False), ("fc", 1, 1, 1, 4096, 1000, 4, 8, 1, False),
    ("fc", 1, 1, 1, 4096, 1000, 4, 8, 16, False),
}
FIELDS = ("cycles", "stall_cycles", "compute_cycles", "dram_bits", "dram_read_bits", "dram_write_bits",
          "energy_total", "energy_core", "energy_buffers", "energy_dram", "energy_wbuf", "energy_ibuf",
          "energy_obuf", "sram_read_wbuf", "sram_read_ibuf", "sram_read_obuf", "sram_write_wbuf",
          "sram_write_ibuf", "sram_write_obuf")


def row_spec(row: dict):
    """The LayerSpec and simulator-call key of a single-layer reference row."""
    from bitnas.space import LayerSpec

    if row["kind"] == "conv":
        s = row["shape"]
        if s["H"] != s["W"] or s["R"] != s["S"] or s["pad"] != s["R"] // 2:
            raise SystemExit(f"row {row['sim_call']}: not a square 'same'-padded conv")
        spec = LayerSpec("conv", s["C"], s["K"], s["R"], s["stride"], 1, s["H"], w_bits=row["wprec"],
                         a_bits=row["iprec"])
        assert spec.out_hw == s["OH"], row["sim_call"]
        key = ("conv", s["R"], s["OH"], s["stride"], s["C"], s["K"])
    else:
        ni, no = map(int, re.search(r"Ni=(\d+), No=(\d+)", row["sim_call"]).groups())
        spec = LayerSpec("linear", ni, no, hw=1, w_bits=row["wprec"], a_bits=row["iprec"])
        key = ("fc", 1, 1, 1, ni, no)
    return spec, key + (row["iprec"], row["wprec"], row["batch"], row["im2col"])


def net_spec(layer: dict):
    from bitnas.space import LayerSpec

    if layer["kind"] == "fc":
        return LayerSpec("linear", layer["IC"], layer["OC"], hw=1, w_bits=layer["wprec"], a_bits=layer["iprec"])
    k, o, s = layer["K"], layer["O"], layer["S"]
    spec = LayerSpec("conv", layer["IC"], layer["OC"], k, s, 1, o * s, w_bits=layer["wprec"], a_bits=layer["iprec"])
    assert spec.out_hw == o, layer
    return spec


def predicted(cost) -> dict[str, float]:
    nj = 1e6  # mJ -> nJ
    out = {"cycles": cost.cycles, "stall_cycles": cost.stall_cycles, "compute_cycles": cost.compute_cycles,
           "dram_bits": cost.dram_read_bits + cost.dram_write_bits, "dram_read_bits": cost.dram_read_bits,
           "dram_write_bits": cost.dram_write_bits, "energy_total": cost.energy_mj * nj,
           "energy_core": cost.energy_core_mj * nj, "energy_buffers": cost.energy_buffer_mj * nj,
           "energy_dram": cost.energy_dram_mj * nj}
    for b in ("wbuf", "ibuf", "obuf"):
        out[f"energy_{b}"] = cost.energy_buffers_mj[b] * nj
        out[f"sram_read_{b}"] = cost.sram_read_bits[b]
        out[f"sram_write_{b}"] = cost.sram_write_bits[b]
    return out


def reference(row: dict) -> dict[str, float]:
    e = row["energy_nJ"]
    out = {"cycles": row["cycles"], "stall_cycles": row["stall_cycles"], "compute_cycles": row["compute_cycles"],
           "dram_bits": row["dram_read_bits"] + row["dram_write_bits"], "dram_read_bits": row["dram_read_bits"],
           "dram_write_bits": row["dram_write_bits"], "energy_total": e["total"], "energy_core": e["core"],
           "energy_buffers": e["buffers"], "energy_dram": e["dram"]}
    for b in ("wbuf", "ibuf", "obuf"):
        out[f"energy_{b}"] = e["buffers_detail"][b]
        out[f"sram_read_{b}"] = row["sram_read_bits"][b]
        out[f"sram_write_{b}"] = row["sram_write_bits"][b]
    return out


def rel(p: float, r: float) -> float:
    return 0.0 if p == r else (p - r) / r if r else float("inf")


def distribution(errors: list[float]) -> dict[str, float]:
    a = np.abs(np.array(errors, dtype=float))
    return {"n": len(a), "exact_share": float(np.mean(a < 1e-9)), "median_abs_rel_err": float(np.median(a)),
            "p90_abs_rel_err": float(np.percentile(a, 90)), "max_abs_rel_err": float(a.max())}


def shares(rows: list[dict]) -> dict[str, float]:
    return {"n": len(rows),
            "cycles_within_10pct": float(np.mean([abs(r["err"]["cycles"]) <= CYCLES_TOL for r in rows])),
            "energy_within_15pct": float(np.mean([abs(r["err"]["energy_total"]) <= ENERGY_TOL for r in rows]))}


def config_check(ref_cfg: dict, cfg) -> dict[str, object]:
    """Every constant of the edge preset against the reference's configuration (nothing is fitted)."""
    ec = ref_cfg["energy_costs"]
    pairs = {
        "rows": (cfg.rows, ref_cfg["array_rows_N_inputs_a"]), "cols": (cfg.cols, ref_cfg["array_cols_M_outputs_c"]),
        "max_bits": (cfg.max_bits, ref_cfg["high_prec_bits_pmax"]),
        "brick_bits": (cfg.brick_bits, ref_cfg["low_prec_bits_pmin"]),
        "frequency_hz": (cfg.frequency_mhz * 1e6, ref_cfg["frequency_Hz"]),
        "dram_bits_per_cycle": (cfg.dram_bits_per_cycle, ref_cfg["mem_if_width_bits_per_cycle"]),
        "wbuf_bytes": (cfg.wbuf_kb * 1024, ref_cfg["wbuf_bytes"]), "ibuf_bytes": (cfg.ibuf_kb * 1024, ref_cfg["ibuf_bytes"]),
        "obuf_bytes": (cfg.obuf_kb * 1024, ref_cfg["obuf_bytes"]), "psum_bits": (cfg.psum_bits, ref_cfg["partial_sum_oprec_bits"]),
        "core_pj_per_cycle": (cfg.energy_pj.core_per_cycle, ec["core_dynamic_pJ_per_cycle"]),
        "dram_pj_per_bit": (cfg.energy_pj.dram_per_bit, ec["dram_pJ_per_bit"]),
    }
    for b in ("wbuf", "ibuf", "obuf"):
        for op in ("read", "write"):
            pairs[f"{b}_{op}_pj_per_bit"] = (getattr(cfg.energy_pj, f"{b}_{op}_per_bit"), ec[f"{b}_{op}_pJ_per_bit"])
    mismatched = {k: v for k, v in pairs.items() if not np.isclose(v[0], v[1], rtol=1e-12)}
    return {"constants_checked": len(pairs), "mismatched": mismatched}


def plot(layers: list[dict], nets: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, field, tol, label in ((axes[0], "cycles", CYCLES_TOL, "cycles"),
                                  (axes[1], "energy_total", ENERGY_TOL, "energy (nJ)")):
        for rows, marker, name in ((layers, "o", "single layers"), (nets, "s", "network layers"),):
            ref = np.array([r["ref"][field] for r in rows])
            pred = np.array([r["pred"][field] for r in rows])
            ax.scatter(ref, pred, marker=marker, s=22, alpha=0.7, label=f"{name} ({len(rows)})")
        allv = [r["ref"][field] for r in layers + nets]
        lo, hi = min(allv) / 2, max(allv) * 2
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, xs, "k-", lw=0.8)
        ax.fill_between(xs, xs * (1 - tol), xs * (1 + tol), color="tab:green", alpha=0.15,
                        label=f"±{int(tol * 100)}%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"released simulator {label}")
        ax.set_ylabel(f"bitnas edge preset {label}")
        ax.legend(fontsize=8)
    fig.suptitle("BitFusion: bitnas model vs the released simulator (bf_e_conf.ini)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default="/work/shared/bitfusion/reference.json")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)

    from bitnas.backends.bitfusion import BitFusionModel, load_config

    ref = json.loads(Path(args.reference).read_text())
    cfg = load_config("edge")
    model = BitFusionModel(cfg)

    layers = []
    t0 = time.perf_counter()
    for row in ref["layers"]:
        spec, key = row_spec(row)
        cost = model.simulate(spec, batch=row["batch"], im2col=row["im2col"])
        p, r = predicted(cost), reference(row)
        layers.append({"call": row["sim_call"], "kind": row["kind"], "group": f"{key[0]} K{key[1]} O{key[2]} "
                       f"S{key[3]} {key[4]}->{key[5]}{' im2col' if key[9] else ''}", "dev": key in DEV_ROWS,
                       "bits": f"a{row['iprec']}w{row['wprec']}", "batch": row["batch"], "pred": p, "ref": r,
                       "err": {f: rel(p[f], r[f]) for f in FIELDS}})
    ms_per_layer = (time.perf_counter() - t0) / len(ref["layers"]) * 1e3

    nets, net_layers, rule_agrees = [], [], 0
    for net in ref["networks"]:
        total = {"cycles": 0, "stall_cycles": 0, "compute_cycles": 0, "dram_bits": 0, "energy_total": 0.0,
                 "energy_core": 0.0, "energy_buffers": 0.0, "energy_dram": 0.0}
        for layer in net["layers"]:
            spec = net_spec(layer)
            rule_agrees += model.uses_im2col(spec) == layer["im2col"]
            cost = model.simulate(spec, batch=net["batch"])  # bitnas's im2col rule, not the row's flag
            p = predicted(cost)
            r = {"cycles": layer["cycles"], "stall_cycles": layer["stall_cycles"],
                 "dram_bits": layer["dram_read_bits"] + layer["dram_write_bits"],
                 "energy_total": layer["energy_nJ_total"]}
            net_layers.append({"net": f"{net['name']} {net['precision_mode']} b{net['batch']}",
                               "layer": layer["layer"], "pred": p, "ref": r,
                               "err": {f: rel(p[f], r[f]) for f in r}})
            for f in total:
                total[f] += p[f]
        rt = reference(net)
        nets.append({"net": net["name"], "precision_mode": net["precision_mode"], "batch": net["batch"],
                     "pred": total, "ref": {f: rt[f] for f in total}, "err": {f: rel(total[f], rt[f]) for f in total}})

    def dists(rows: list[dict], fields) -> dict[str, dict]:
        return {f: distribution([r["err"][f] for r in rows]) for f in fields}

    groups = sorted({r["group"] for r in layers})
    result = {
        "command": "python benchmarks/bitfusion_fidelity.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "reference": {"path": args.reference, "source": ref["source"]},
        "model": "bitnas.backends.bitfusion.BitFusionModel, preset edge",
        "tolerances": {"cycles": CYCLES_TOL, "energy": ENERGY_TOL},
        "constants_vs_reference_config": config_check(ref["config"], cfg),
        "single_layers": {"all": shares(layers), "per_field": dists(layers, FIELDS)},
        "generalization": {
            "how": ("No parameter is fitted: every constant of the edge preset is the reference configuration's "
                    "(constants_vs_reference_config), and the model is the mechanism the notes describe "
                    "(exhaustive power-of-two tiling x loop orders, buffer promotion, fill/drain stalls, "
                    "min cycles then energy). The equations the notes only sketch (SRAM reads per MAC, the "
                    "output buffer's partial-sum traffic) were checked on the 'dev' rows listed in DEV_ROWS "
                    "before this benchmark first ran; 'held_out' is every other single-layer row, and "
                    "network rows were not looked at. Per shape group: nothing is refit when a group is "
                    "left out (there is nothing to refit), so leave-one-group-out scores equal these."),
            "dev_rows": shares([r for r in layers if r["dev"]]),
            "held_out_rows": shares([r for r in layers if not r["dev"]]),
            "held_out_per_field": dists([r for r in layers if not r["dev"]], FIELDS),
            "per_shape_group": {g: {**shares([r for r in layers if r["group"] == g]),
                                    "dev_rows": sum(r["dev"] for r in layers if r["group"] == g)} for g in groups},
        },
        "networks": {
            "totals": nets,
            "totals_within": {"cycles_within_10pct": float(np.mean([abs(n["err"]["cycles"]) <= CYCLES_TOL for n in nets])),
                              "energy_within_15pct": float(np.mean([abs(n["err"]["energy_total"]) <= ENERGY_TOL
                                                                    for n in nets]))},
            "layers": shares(net_layers),
            "layers_per_field": dists(net_layers, ("cycles", "stall_cycles", "dram_bits", "energy_total")),
            "im2col_rule_agrees_with_first_layer_flag": f"{rule_agrees}/{len(net_layers)}",
        },
        "ms_per_layer_uncached": ms_per_layer,
        "rows": [{k: r[k] for k in ("call", "group", "bits", "batch", "dev", "err")} for r in layers],
        "network_layer_rows": [{k: r[k] for k in ("net", "layer", "err")} for r in net_layers],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bitfusion_fidelity.json").write_text(json.dumps(result, indent=1))
    plot(layers, net_layers, out / "bitfusion_fidelity.png")
    s, n = result["single_layers"]["all"], result["networks"]
    print(f"single layers ({s['n']}): cycles within 10% {s['cycles_within_10pct']:.1%}, "
          f"energy within 15% {s['energy_within_15pct']:.1%}")
    print(f"held-out layers: {result['generalization']['held_out_rows']}")
    print(f"network layers: {n['layers']}; totals: {n['totals_within']}")
    for f, d in result["single_layers"]["per_field"].items():
        print(f"  {f:16s} exact {d['exact_share']:.0%}  median |err| {d['median_abs_rel_err']:.2e}  "
              f"max |err| {d['max_abs_rel_err']:.2e}")
    print(f"wrote {out / 'bitfusion_fidelity.json'} and .png; {ms_per_layer:.1f} ms per layer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
