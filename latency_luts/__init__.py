"""Latency lookup tables: the profiler, the file format and its queries."""

from bitnas.latency_luts.lut import LatencyTable

__all__ = ["LatencyTable"]
