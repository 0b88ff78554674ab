"""Reading user files (CSV, TSV, JSON Lines) into columns, with errors that name the file and line."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path


FORMATS = ("csv", "tsv", "jsonl")


def detect_format(path: str) -> str:
    """'csv', 'tsv' or 'jsonl' from a file name (stdin, '-', is read as one text per line: 'lines')."""
    if path == "-":
        return "lines"
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("jsonl", "json", "ndjson"):
        return "jsonl"
    if suffix in ("tsv", "tab"):
        return "tsv"
    if suffix == "csv":
        return "csv"
    if suffix == "txt":
        return "lines"
    raise ValueError(f"Cannot tell the format of {path!r}: use a .csv, .tsv, .jsonl or .txt file.")


def _read_text(path: str) -> str:
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        where = "standard input" if path == "-" else path
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{where}:{line}: the input is not valid UTF-8 (byte {raw[err.start]:#04x}); convert it with "
            "`iconv -t UTF-8` or save it as UTF-8."
        ) from None


def read_columns(path: str, fmt: str | None = None) -> dict[str, list]:
    """Columns of a file with a header row (CSV/TSV; TSV without quoting, as GLUE) or of JSON Lines objects.

    A `.txt` file or standard input gives one text per line in the column `text`.
    """
    fmt = fmt or detect_format(path)
    text = _read_text(path)
    if fmt == "lines":
        return {"text": [line for line in text.splitlines() if line.strip()]}
    if fmt == "jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not a JSON object ({err.msg}).") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}.")
            rows.append((n, row))
        names = list(dict.fromkeys(k for _, row in rows for k in row))
        for n, row in rows:
            missing = [k for k in names if k not in row]
            if missing:
                raise ValueError(f"{path}:{n}: missing field(s) {missing} that other lines have.")
        return {k: [row[k] for _, row in rows] for k in names}
    if fmt not in ("csv", "tsv"):
        raise ValueError(f"Unknown format {fmt!r}; use one of {FORMATS}.")
    reader = (
        csv.reader(io.StringIO(text), delimiter="\t", quotechar=None, quoting=csv.QUOTE_NONE)
        if fmt == "tsv"
        else csv.reader(io.StringIO(text))
    )
    lines = list(reader)
    if not lines:
        raise ValueError(f"{path} is empty; it needs a header row and at least one data row.")
    header = lines[0]
    columns: dict[str, list] = {name: [] for name in header}
    for n, row in enumerate(lines[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{path}:{n}: expected {len(header)} fields ({', '.join(header)}), got {len(row)}. "
                + ("TSV fields are separated by tabs and never quoted." if fmt == "tsv" else "")
            )
        for name, value in zip(header, row):
            columns[name].append(value)
    return columns


def require_columns(columns: dict[str, list], path: str, needed: list[str]) -> None:
    """Raise naming the file if any of `needed` is not a column."""
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing}; its columns are {list(columns)}.")
