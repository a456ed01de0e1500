"""Errors of the data layer, each with a message that says what to do."""

from __future__ import annotations


class DataError(Exception):
    """Base class of curvbench's data errors."""


class UnknownDatasetError(DataError, ValueError):
    """A data set or problem name that the data layer does not know."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The cached data set a run needs is missing (or not valid)."""


class ChecksumError(DataError, ValueError):
    """A downloaded or local archive whose md5 differs from the expected one."""

    def __init__(self, filename: str, expected: str, actual: str, removed: bool = True):
        self.filename, self.expected, self.actual = filename, expected, actual
        what = (
            "the file was removed (a truncated or corrupted download?); retry the download"
            if removed
            else "replace or delete the file, then retry"
        )
        super().__init__(
            f"checksum mismatch for {filename}: expected md5 {expected}, got {actual}; {what}."
        )


class DownloadError(DataError, OSError):
    """A download that failed or ended early."""


class UnsafeArchiveError(DataError, ValueError):
    """An archive with members that would escape the extraction directory."""


class ArchiveFormatError(DataError, ValueError):
    """An archive whose content is not in the CIFAR python format."""
