"""Exceptions raised for bad user input. Every message is one line and names the culprit."""


class RankingError(ValueError):
    """Base class for errors caused by bad input (data, config, checkpoints)."""


class DatasetError(RankingError):
    """The dataset directory or its index files are missing or inconsistent."""


class CorruptImageError(DatasetError):
    """An image file cannot be decoded (corrupt, truncated or not an image)."""


class CheckpointError(RankingError):
    """A checkpoint is missing, unreadable or does not match the model being built."""


class DiskFullError(RankingError):
    """The filesystem has no room for a file the pipeline writes."""


class RunDirBusyError(RankingError):
    """Another process is writing into the same run directory."""
