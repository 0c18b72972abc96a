"""Exceptions raised for bad user input (`RankingError`) and for a full disk (`DiskFullError`, an
OS error). Every message is one line and names the culprit."""

import errno


class RankingError(ValueError):
    """Base class for errors caused by bad input (data, config, checkpoints)."""


class DatasetError(RankingError):
    """The dataset directory or its index files are missing or inconsistent."""


class CorruptImageError(DatasetError):
    """An image file cannot be decoded (corrupt, truncated or not an image)."""


class CheckpointError(RankingError):
    """A checkpoint is missing, unreadable or does not match the model being built."""


class DiskFullError(OSError):
    """The filesystem has no room for a file the pipeline writes: the environment, not the input
    (an ``OSError`` with errno ENOSPC whose message is the one line, so the CLI exits 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


class RunDirBusyError(RankingError):
    """Another process is writing into the same run directory."""
