"""The analytic target ``bitops``: no device, no LUT; a candidate's cost is what its layers say.

QFA (BatchQuant) searches its mixed-precision supernet against BitOps, MACs x weight bits x activation
bits, which no runtime measures. This target executes every W/A pair of 2-8 bits (and float) in that
sense, so a space with 3-bit layers can be searched on accuracy, ``bitops`` and ``size_bytes``; objectives
that read a LUT (``latency_ms``, ``energy_mj``) are refused when the project loads. Its artifacts are QDQ
models (sub-byte weights at the smallest ONNX type that holds them, sub-byte activations as clipped
ranges) verified on ONNX Runtime and OpenVINO, as for the BitFusion target.
"""

from __future__ import annotations

from bitnas.api import Target
from bitnas.backends.base import register_target

_BITS = (2, 3, 4, 5, 6, 7, 8, 32)

register_target(Target(
    name="bitops", backend=None, simulated=True, int4_weights=True,
    bit_options=tuple((w, a) for w in _BITS for a in _BITS),
    verify_backends=("ort", "openvino"),
    description="analytic: BitOps and size only, no LUT (QFA's setting); any W/A of 2-8 bits or float",
))
