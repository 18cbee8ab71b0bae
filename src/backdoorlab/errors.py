"""Exception types that carry a user-facing message.

Every bad input (config, dataset file, checkpoint, diverging training) raises one of
these; the CLI prints the message alone and exits non-zero, so the message must name
the file, field or key at fault.
"""

from __future__ import annotations


class BackdoorLabError(Exception):
    """Base class: the message is shown to the user as is."""


class ConfigError(BackdoorLabError):
    """A configuration file or override is malformed."""


class MissingExtraError(ConfigError):
    """An optional dependency group (``pip install 'backdoorlab[NAME]'``) is needed but not installed."""


class DatasetError(BackdoorLabError):
    """A dataset file is missing, truncated or has the wrong layout."""


class CheckpointError(BackdoorLabError):
    """A checkpoint is missing, not safetensors, or does not match the model."""


class TrainingDivergedError(BackdoorLabError):
    """The loss became NaN or infinite."""


class ModelContractError(BackdoorLabError):
    """A model does not honour the ``features(x)`` / linear ``head`` contract."""


class RunClaimed(BackdoorLabError):
    """Another process owns this config (or finished it): not an error of the run, nothing was started."""


class RunInterrupted(BaseException):
    """A run stopped by SIGTERM: recorded as failed ("interrupted"), never as complete.

    A BaseException so that no ``except Exception`` on the way swallows it.
    """
