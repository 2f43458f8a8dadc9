"""Profiling a supernet's space on a target into a LUT: what ``bitnas profile`` and a project share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bitnas import ui
from bitnas.errors import ConfigError
from bitnas.latency_luts.lut import LatencyTable

# measurement settings a table must match to be reused for a project
REUSE_KEYS = ("warmup", "repeats", "rounds", "statistic")


def space_bits(space) -> list[tuple[int, int]]:
    """Every (w_bits, a_bits) some policy gene of ``space`` offers, float first."""
    return sorted({tuple(o) for g in space.policy_genes for o in g.options}, key=lambda b: (-b[0], -b[1]))


def target_bits(target, space) -> list[tuple[int, int]]:
    """The bit options of ``space`` the LUT must hold for ``target``; one it cannot execute is an error."""
    bits = space_bits(space)
    bad = [b for b in bits if tuple(b) not in target.bit_options]
    if bad:
        raise ConfigError(f"space '{space.name}' offers W/A bits {[list(b) for b in bad]}, which target "
                          f"'{target.name}' does not execute (it runs {[list(b) for b in target.bit_options]})")
    return bits


def same_settings(lut: LatencyTable, settings: dict[str, Any]) -> bool:
    """True when ``lut`` was measured with the measurement ``settings`` of a project."""
    m = lut.measurement
    if m.get("simulated"):
        return True
    if int(m.get("threads", 1)) != int(settings["threads"]):
        return False
    if bool(lut.blocks) != bool(settings.get("blocks", False)):
        return False
    return all(m.get(k) == settings[k] for k in REUSE_KEYS)


def missing_entries(lut: LatencyTable, supernet) -> list[str]:
    """Keys of the space's layers (at each bit option) the table lacks."""
    bits = space_bits(supernet.space)
    out = []
    for s in supernet.all_layer_specs():
        options = bits if s.op in ("conv", "linear", "dense") else [(32, 32)]
        for b in options:
            key = s.with_bits(b).key
            if key not in lut.entries:
                out.append(key)
    return out


def profile_supernet(target, supernet, out: str | Path, threads: int = 1, warmup: int = 10, repeats: int = 60,
                     rounds: int = 3, statistic: str = "median", blocks: bool = False, mixed_fraction: float = 0.15,
                     reduce_range: bool | None = None, model_dir: str | Path | None = None, chunk: int = 64,
                     calibrate: int = 0, preset: str | None = None,
                     progress: Callable[[str, int, int], None] | None = None) -> LatencyTable:
    """Measure (or simulate) every distinct layer of ``supernet``'s space on ``target``; write ``out``.

    The family's ``layers()`` are first checked against the exported graphs of a few of its subnets.
    Resumable: every finished chunk is checkpointed next to ``out`` and a rerun with the same settings
    skips what it holds. With ``calibrate`` N, N whole subnets are measured and the network-level
    correction is fitted (the measured table is written first, so a failing calibration loses nothing).
    """
    from bitnas.latency_luts.profiler import profile, simulate
    from bitnas.passes.inc_ptq import resolve_reduce_range
    from bitnas.supernets.families import fusion_units, input_shape
    from bitnas.supernets.graphcheck import check_family_layers

    out = Path(out)
    space = supernet.space
    check_family_layers(supernet, samples=1)  # what is priced is what extract() computes, before measuring
    # a simulated target models every bit option it executes, whatever the space offers today
    bits = list(target.bit_options) if target.simulated else target_bits(target, space)
    specs = supernet.all_layer_specs()
    shape = input_shape(supernet)
    options = {"preset": preset} if preset else {}
    backend = target.make_backend(threads=threads, **options)
    if target.simulated:
        n = len(specs) * len(bits)
        with ui.progress_bar(f"simulate {target.name}", n) as update:
            lut = simulate(backend, specs, bits, target.name, space.name,
                           progress or (lambda p, d, t: update(d, p, t)))
    else:
        rr = resolve_reduce_range("auto") if reduce_range is None else reduce_range
        units = fusion_units(supernet) if blocks else []
        ckpt = out.with_name(out.name + ".partial.json")
        n = len(specs) * len(bits)
        with ui.progress_bar(f"profile {target.name} ({space.name})", n) as update:
            lut = profile(backend, specs, bits, target.name, rr, warmup, repeats, rounds, statistic, space.name,
                          progress or (lambda p, d, t: update(d, p, t)), blocks=units, mixed_fraction=mixed_fraction,
                          checkpoint=ckpt, model_dir=model_dir, chunk=chunk)
        lut.measurement["input_shape"] = [1, *shape]
        lut.notes.extend(target.lut_notes)
        if calibrate:
            from bitnas.latency_luts.validate import calibrate as fit

            lut.save(out)  # the measured table is kept even if calibration fails
            lut.calibration = fit(lut, backend, supernet, calibrate)
        ckpt.unlink(missing_ok=True)
    lut.source = str(out)
    lut.save(out)
    ov = lut.overhead.get("median_ms", 0.0) * 1e3
    ui.console.print(f"LUT: {len(lut.entries)} layer and {len(lut.blocks)} block entries -> {out}"
                     + (f" (per-call overhead {ov:.1f} us, statistic {lut.statistic})" if not target.simulated else ""))
    return lut
