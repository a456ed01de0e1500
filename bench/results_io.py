"""Atomic result files and resume logic, shared by the overhead benchmark and the grid search.

Every write goes to a temporary file in the target's directory and is then ``os.replace``d, so a
killed run leaves either the old or the new file, never a torn one. ``merge_rows`` implements
"a rerun skips what exists unless told to redo it": rows are keyed by a tuple of columns.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def _file_mode(path: Path) -> int:
    """Return the mode ``open`` would give a new file (0o666 less the umask), or the old one's.

    ``tempfile.mkstemp`` creates its file ``0o600``; renamed into place as is, a result on a
    cluster's shared filesystem could be read by its owner alone.
    """
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


@functools.cache
def _umask() -> int:
    """Return the process's umask, read once.

    Reading it means setting it, process-wide: not on every write, where a thread creating a
    file meanwhile would get a 0 umask.
    """
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same folder + ``os.replace``).

    The file gets the mode a plain ``open(path, "w")`` would give it (or keeps its old one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode(path))
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(value: Any) -> Any:
    """Serialise numpy scalars, paths and other simple objects."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    return atomic_write_text(path, text)


def read_json(path: str | Path, default: Any = None) -> Any:
    """Return the parsed JSON at ``path``, or ``default`` when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def _cell(value: Any) -> Any:
    """Convert a value to a CSV cell: ``None`` and NaN become empty."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def atomic_write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]):
    """Write ``rows`` with the header ``columns`` (extra keys are kept after them) atomically.

    Args:
        path: the CSV file.
        rows: dict rows; missing columns are written empty.
        columns: the leading columns, in order.

    Returns:
        The path written.

    """
    rows = list(rows)
    header = list(columns)
    for row in rows:
        header.extend(key for key in row if key not in header)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key)) for key in header})
    return atomic_write_text(path, buffer.getvalue())


def read_csv_rows(path: str | Path) -> list[Row]:
    """Read the rows of a CSV as dicts of strings (empty list when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def row_key(row: Mapping[str, Any], key_columns: Sequence[str]) -> tuple[str, ...]:
    """Return the identity of a row: its ``key_columns`` values as strings (CSV round-trip safe)."""
    return tuple(str(row.get(column, "")) for column in key_columns)


def existing_keys(path: str | Path, key_columns: Sequence[str]) -> set[tuple[str, ...]]:
    """Keys of the rows already stored in ``path`` (for skipping finished work on a rerun)."""
    return {row_key(row, key_columns) for row in read_csv_rows(path)}


def merge_rows(
    old: Iterable[Mapping[str, Any]],
    new: Iterable[Mapping[str, Any]],
    key_columns: Sequence[str],
) -> list[Row]:
    """``old`` rows updated by ``new`` rows with the same key (new ones win), order preserved."""
    merged: dict[tuple[str, ...], Row] = {}
    for row in old:
        merged[row_key(row, key_columns)] = dict(row)
    for row in new:
        merged[row_key(row, key_columns)] = dict(row)
    return list(merged.values())


def upsert_csv(
    path: str | Path,
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    key_columns: Sequence[str],
) -> Path:
    """Merge ``rows`` into the CSV at ``path`` by key and rewrite it atomically."""
    merged = merge_rows(read_csv_rows(path), rows, key_columns)
    return atomic_write_csv(path, merged, columns)


# --------------------------------------------------------------------------------------------
# A careful reader: refuses empty, binary and truncated files (added; the functions above are
# unchanged)
# --------------------------------------------------------------------------------------------


class CSVFileError(ValueError):
    """A result CSV that cannot be trusted: empty, not text, or cut mid-row.

    ``path`` and ``line`` (1-based, ``None`` for the whole file) say where; ``str(err)`` is one
    line naming both.
    """

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {reason}")


def read_csv_rows_strict(path: str | Path, required: Sequence[str] = ()) -> list[Row]:
    """Read a result CSV written by :func:`atomic_write_csv`, refusing anything it cannot be.

    Args:
        path: the CSV file (must exist).
        required: columns the header must have.

    Returns:
        The rows as dicts of strings.

    Raises:
        CSVFileError: the file is empty, binary (NUL bytes or not UTF-8), lacks a ``required``
            column, has a row with more or fewer cells than the header, or does not end with a
            newline (a write cut mid-row). The error names the file and the line.

    """
    path = Path(path)
    data = path.read_bytes()
    if not data.strip():
        raise CSVFileError(path, None, "empty file (no header, no rows)")
    if b"\0" in data:
        raise CSVFileError(path, None, "not a CSV text file (contains NUL bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise CSVFileError(path, line, "not a UTF-8 CSV text file") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[Row] = []
    try:
        header = next(reader)
        missing = [c for c in required if c not in header]
        if missing:
            raise CSVFileError(path, 1, f"header lacks the column(s) {', '.join(missing)}")
        for cells in reader:
            if not cells:  # a blank line
                continue
            if len(cells) != len(header):
                raise CSVFileError(
                    path,
                    reader.line_num,
                    f"row has {len(cells)} cells, the header {len(header)} (truncated or corrupt)",
                )
            rows.append(dict(zip(header, cells)))
    except csv.Error as err:
        raise CSVFileError(path, reader.line_num, f"unreadable CSV ({err})") from None
    if not text.endswith("\n"):
        raise CSVFileError(path, reader.line_num, "last row is cut off (no final newline)")
    return rows
