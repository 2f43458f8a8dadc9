"""The fusion units (inverted-residual blocks) an elastic MobileNetV2 space can produce."""

from __future__ import annotations

from typing import Any

from bitnas.space import LayerSpec


def all_blocks(d: Any) -> list[tuple[LayerSpec, LayerSpec, LayerSpec]]:
    """Every distinct float inverted-residual block (expand, depthwise, project) of an MBV2Def space."""
    seen: dict[tuple[str, ...], tuple[LayerSpec, LayerSpec, LayerSpec]] = {}
    stem = LayerSpec("conv", d.in_channels, d.stem_channels, 3, d.stem_stride, 1, d.image_size, "relu6")
    hw = stem.out_hw
    cins = {d.stem_channels}
    for st in d.stages:
        for b in range(max(st.depths)):
            stride = st.stride if b == 0 else 1
            in_opts = sorted(cins if b == 0 else set(st.widths))
            out_hw = (hw + 2 * 1 - 3) // stride + 1
            for cin in in_opts:
                for e in d.expands:
                    mid = cin * e
                    for k in d.kernels:
                        for w in st.widths:
                            blk = (LayerSpec("conv", cin, mid, 1, 1, 1, hw, "relu6"),
                                   LayerSpec("conv", mid, mid, k, stride, mid, hw, "relu6"),
                                   LayerSpec("conv", mid, w, 1, 1, 1, out_hw, "none", stride == 1 and cin == w))
                            seen.setdefault(tuple(s.key for s in blk), blk)
            hw = out_hw
        cins = set(st.widths)
    return list(seen.values())
