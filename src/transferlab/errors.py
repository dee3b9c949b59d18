"""User-facing errors: the CLI prints them as one line and exits with code 2 (no traceback)."""


class TransferlabError(Exception):
    """Base class for errors caused by the user's input (data, options, files), not by a bug."""


class DataError(TransferlabError):
    """The dataset folder, a manifest or an image is missing, unreadable or inconsistent."""


class ModelError(TransferlabError):
    """Unknown model name, incompatible weights, or weights that cannot be found offline."""


class CheckpointError(TransferlabError):
    """A checkpoint or run directory is missing, corrupt or unsafe to load."""
