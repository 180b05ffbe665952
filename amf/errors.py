"""Errors that end a run with a one-line message and a non-zero exit."""


class AmfError(Exception):
    """Base of every error the command line reports as one line (no traceback)."""


class InputError(AmfError):
    """The input folder, a stack or a crop is missing, malformed or unreadable."""


class ModelError(AmfError):
    """The ensemble's manifest or weights are missing, inconsistent or unusable."""


class OutputError(AmfError):
    """The output folder cannot be made or written (read-only, a file, full disk)."""
