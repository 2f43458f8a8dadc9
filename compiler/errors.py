"""Error hierarchy: every error says whose fault it is.

- ``UserError``: bad input from the user (config, file, LUT, artifact); the message names the file,
  field or layer at fault. The CLI prints it in one line and exits 2.
- ``MissingDependencyError``: an optional runtime or tool is not installed; says which package to install.
- ``UnsupportedBackendError``: the backend is unknown or cannot run this model.
- ``InternalError``: a bug in bitnas; the CLI prints the traceback.
"""

from __future__ import annotations


class BitnasError(Exception):
    """Base of every error bitnas raises on purpose."""


class UserError(BitnasError):
    """The user's input is at fault."""


class ConfigError(UserError):
    """A configuration file or value is invalid."""


class DataError(UserError):
    """A data set file is missing or malformed."""


class ArtifactError(UserError):
    """An artifact folder, manifest or model file is missing, corrupt or tampered with."""


class LutError(UserError):
    """A latency table is malformed, lacks an entry, or belongs to another device."""


class UnknownLayerError(LutError):
    """A layer has no entry in the latency table."""


class SpaceError(UserError):
    """A candidate does not belong to the search space, or a space name is unknown."""


class UnsupportedBackendError(BitnasError):
    """The backend is unknown or cannot run the given model."""


class MissingDependencyError(UnsupportedBackendError):
    """An optional dependency needed for this step is not installed."""

    def __init__(self, package: str, purpose: str):
        super().__init__(f"{purpose} needs the package '{package}': pip install {package}")
        self.package = package


class VerificationError(BitnasError):
    """The artifact runs but fails a check it must pass (non-finite outputs, an accuracy floor): exit 1."""


class InternalError(BitnasError):
    """A bug in bitnas: an invariant it relies on does not hold."""
