"""results_io.read_csv_rows_strict: refuses empty, binary and torn CSVs, naming file and line."""

import pytest

from bench import results_io

GOOD = "a,b,c\n1,2,3\n4,5,6\n"


def test_reads_what_atomic_write_csv_wrote(tmp_path):
    path = results_io.atomic_write_csv(
        tmp_path / "x.csv", [{"a": 1, "b": "x,y", "c": None}], ["a", "b", "c"]
    )
    assert results_io.read_csv_rows_strict(path, ["a"]) == [{"a": "1", "b": "x,y", "c": ""}]


@pytest.mark.parametrize(
    ("data", "line", "reason"),
    [
        (b"", None, "empty file"),
        (b"\0\1\2", None, "NUL bytes"),
        (b"a,b\n\xff\xfe,1\n", 2, "not a UTF-8"),
        (GOOD.encode()[:-3], 3, "row has 2 cells"),
        (GOOD.encode()[:-1], 3, "no final newline"),
        (b'a,b,c\n1,"2\n', 2, "row has 2 cells"),
        (b"x,y\n1,2\n", 1, "lacks the column(s) a"),
    ],
    ids=["empty", "nul", "latin1", "cut-row", "cut-last-cell", "open-quote", "wrong-header"],
)
def test_refuses_with_file_and_line(tmp_path, data, line, reason):
    path = tmp_path / "x.csv"
    path.write_bytes(data)
    with pytest.raises(results_io.CSVFileError) as info:
        results_io.read_csv_rows_strict(path, ["a"])
    assert info.value.line == line and reason in str(info.value)
    assert str(info.value).startswith(f"{path}:{line}:" if line else f"{path}:")
