"""bitnas: a hardware-aware deployment compiler for quantized neural networks."""

from bitnas.errors import (
    ArtifactError,
    BitnasError,
    ConfigError,
    InternalError,
    LutError,
    MissingDependencyError,
    UnsupportedBackendError,
    UserError,
)
from bitnas.space import Candidate, Gene, LayerSpec, SearchSpace, Supernet

__version__ = "0.1.0"

__all__ = [
    "ArtifactError", "BitnasError", "Candidate", "ConfigError", "Gene", "InternalError", "LayerSpec",
    "LutError", "MissingDependencyError", "SearchSpace", "Supernet", "UnsupportedBackendError", "UserError",
    "__version__",
]
