"""Target runtimes behind one ``Backend`` protocol."""

from bitnas.backends import analytic as _analytic  # noqa: F401  (registers the target)
from bitnas.backends import bitfusion as _bitfusion  # noqa: F401  (registers the backend)
from bitnas.backends import openvino as _openvino  # noqa: F401
from bitnas.backends import ort as _ort  # noqa: F401
from bitnas.backends import tvm as _tvm  # noqa: F401
from bitnas.backends.base import Backend, Measurement, backend_names, get_backend, interleaved_timing

__all__ = ["Backend", "Measurement", "backend_names", "get_backend", "interleaved_timing"]
