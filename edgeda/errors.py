"""Errors a user can act on.

Anything raised as :class:`EdgedaError` is printed by the CLI as one sentence with exit code 2;
anything else is a bug and keeps its traceback.
"""


class EdgedaError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""

    exit_code = 2


class DataError(EdgedaError):
    """A domain could not be used (empty, unlabeled where labels are needed, inconsistent classes)."""


class BundleError(EdgedaError):
    """A bundle is missing, tampered with, or from an unknown format version."""


class TrainingDiverged(EdgedaError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class MissingDependency(EdgedaError):
    """An optional dependency (TensorRT, a GPU, ...) needed for the requested action is absent."""


class BundleWarning(UserWarning):
    """Something about a bundle the user should know that does not stop it loading."""
