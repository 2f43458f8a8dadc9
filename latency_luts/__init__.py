"""Latency lookup tables: the profiler, the file format and its queries, bundles, and the fidelity check.

Shipped tables (package data): ``ort-cpu_mbv2-tiny.json``, ``openvino-cpu_mbv2-tiny.json`` and
``tvm-llvm_mbv2-tiny.json``, measured on the machine named in each file's fingerprint.
"""

from bitnas.latency_luts.lut import LatencyTable

__all__ = ["LatencyTable"]
