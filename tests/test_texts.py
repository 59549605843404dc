"""Tests of indexer.texts: plain text, JSON Lines, CSV and TSV corpora."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.texts import TextReadResult, TextRecord, read_text_sources, read_texts
from mmsearch.errors import InputError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding, newline="")
    return path


def texts(result: TextReadResult) -> list[str]:
    return [r.text for r in result.records]


def test_txt_one_text_per_line_blank_lines_skipped_silently(tmp_path: Path) -> None:
    path = write(tmp_path / "captions.txt", "  a red car \n\n   \na dog\r\nlast")
    result = read_texts(path)
    assert result.records == [
        TextRecord("a red car", f"{path}:1"),
        TextRecord("a dog", f"{path}:4"),
        TextRecord("last", f"{path}:5"),
    ]
    assert result.skipped == []


def test_utf8_bom_is_dropped_and_bad_bytes_replaced(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffcafé\n".encode() + b"bad \xff byte\n")
    assert texts(read_texts(path)) == ["café", "bad \ufffd byte"]


def test_jsonl_skips_bad_lines_with_reasons(tmp_path: Path) -> None:
    lines = [
        '{"text": "a cat", "id": 1}',
        "{not json",
        '{"caption": "no text field"}',
        '{"text": 42}',
        "",
        '["a list"]',
        '{"text": "   "}',
        '{"text": " a boat "}',
    ]
    path = write(tmp_path / "c.jsonl", "\n".join(lines) + "\n")
    result = read_texts(path)
    assert result.records == [
        TextRecord("a cat", f"{path}:1"),
        TextRecord("a boat", f"{path}:8"),
    ]
    reasons = dict(result.skipped)
    assert set(reasons) == {f"{path}:{n}" for n in (2, 3, 4, 6)}
    assert reasons[f"{path}:2"].startswith("invalid JSON")
    assert reasons[f"{path}:3"] == "no 'text' field"
    assert reasons[f"{path}:4"] == "'text' is not a string (int)"
    assert reasons[f"{path}:6"] == "not a JSON object"


def test_ndjson_with_other_field(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ndjson", '{"caption": "x"}\n{"text": "y"}\n')
    result = read_texts(path, field="caption")
    assert texts(result) == ["x"]
    assert result.skipped == [(f"{path}:2", "no 'caption' field")]


def test_csv_column_with_quotes_and_row_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.csv",
        'id,caption\n1,"a car, red"\n2,\n3,"two\nlines"\n4,a dog\n',
    )
    result = read_texts(path, column="caption")
    assert result.records == [
        TextRecord("a car, red", f"{path}:2"),
        TextRecord("two\nlines", f"{path}:4"),
        TextRecord("a dog", f"{path}:5"),
    ]


def test_csv_default_column_is_text_and_bom_header(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "text,id\nhello,1\n", encoding="utf-8-sig")
    assert texts(read_texts(path)) == ["hello"]


def test_csv_short_row_is_skipped_with_reason(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "id,text\n1\n2,ok\n")
    result = read_texts(path)
    assert texts(result) == ["ok"]
    assert result.skipped == [(f"{path}:2", "row has no 'text' value")]


def test_csv_missing_column_lists_available_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "id,caption,url\n1,x,y\n")
    with pytest.raises(InputError) as info:
        read_texts(path)
    assert info.value.path == str(path)
    assert info.value.reason == "no column 'text'; available columns: 'id', 'caption', 'url'"


def test_empty_csv_has_no_header(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no header row"):
        read_texts(write(tmp_path / "c.csv", ""))


def test_tsv(tmp_path: Path) -> None:
    path = write(tmp_path / "c.TSV", "id\ttext\n1\ta, b, c\n2\tsecond\n")
    assert texts(read_texts(path)) == ["a, b, c", "second"]


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        read_texts(tmp_path / "nope.txt")
    assert info.value.reason == "no such file"


def test_read_text_sources_concatenates_in_order(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", "one\ntwo\n")
    b = write(tmp_path / "b.jsonl", '{"text": "three"}\nbad\n')
    result = read_text_sources([a, b])
    assert texts(result) == ["one", "two", "three"]
    assert [s for s, _ in result.skipped] == [f"{b}:2"]
