"""Reading user files (CSV, TSV, JSON Lines) into columns, with errors that name the file and line."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
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


class Columns(dict):
    """Columns of a file (name -> values, one per record), with `lines`: the file line each record starts on."""

    lines: list[int]


def read_columns(path: str, fmt: str | None = None) -> Columns:
    """Columns of a file with a header row (CSV/TSV; TSV without quoting, as GLUE) or of JSON Lines objects.

    A `.txt` file or standard input gives one text per line in the column `text`. Every format has one record per
    line: a CSV field that runs over several lines (usually an unbalanced quote, which would merge the rows after
    it) is refused naming the file and the lines, as are duplicate header names and files without data rows.
    """
    fmt = fmt or detect_format(path)
    text = _read_text(path)
    where = "standard input" if path == "-" else path
    if fmt == "lines":
        numbered = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        if not numbered:
            raise ValueError(f"{where} has no text: give one input per line.")
        return _columns({"text": [line for _, line in numbered]}, [n for n, _ in numbered])
    if fmt == "jsonl":
        return _read_jsonl(path, text)
    if fmt not in ("csv", "tsv"):
        raise ValueError(f"Unknown format {fmt!r}; use one of {FORMATS}.")
    return _read_delimited(path, text, fmt)


def _columns(columns: dict[str, list], lines: list[int]) -> Columns:
    out = Columns(columns)
    out.lines = lines
    return out


def json_line(line: str, where, n: int) -> dict:
    """One JSON Lines row as a dict, or a ValueError naming the file and line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}:{n}: not a JSON object ({err.msg}).") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}:{n}: expected a JSON object per line, got {type(row).__name__}.")
    return row


def _read_jsonl(path: str, text: str) -> Columns:
    rows = [(n, json_line(line, path, n)) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not rows:
        raise ValueError(f'{path} has no JSON objects; it needs one object per line, e.g. {{"text": "..."}}.')
    names = list(dict.fromkeys(k for _, row in rows for k in row))
    for n, row in rows:
        missing = [k for k in names if k not in row]
        if missing:
            raise ValueError(f"{path}:{n}: missing field(s) {missing} that other lines have.")
    return _columns({k: [row[k] for _, row in rows] for k in names}, [n for n, _ in rows])


def _read_delimited(path: str, text: str, fmt: str) -> Columns:
    reader = (
        csv.reader(io.StringIO(text, newline=""), delimiter="\t", quotechar=None, quoting=csv.QUOTE_NONE)
        if fmt == "tsv"
        else csv.reader(io.StringIO(text, newline=""))
    )
    records: list[tuple[int, list[str]]] = []
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            line = reader.line_num if reader.line_num else start
            hint = (
                " A field this long is usually an unbalanced quote that runs to the end of the file."
                if "field limit" in str(err)
                else ""
            )
            raise ValueError(f"{path}:{start}: not valid {fmt.upper()} ({err}, by line {line}).{hint}") from None
        end = reader.line_num
        if any("\n" in field or "\r" in field for field in row):
            raise ValueError(
                f"{path}:{start}: a quoted field runs over lines {start}-{end}. peft-dect reads one record per "
                "line, so this is usually an unbalanced quote merging the rows after it: close the quote (write a "
                'quote inside a field as ""), or replace line breaks inside texts by spaces.'
            )
        records.append((start, row))
        start = end + 1
    if not records:
        raise ValueError(f"{path} is empty; it needs a header row and at least one data row.")
    (_, header), body = records[0], [(n, row) for n, row in records[1:] if row]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValueError(
            f"{path}:1: column(s) {repeated} appear more than once in the header; give every column its own name."
        )
    if not body:
        raise ValueError(f"{path} has a header row ({', '.join(header)}) but no data rows.")
    columns: dict[str, list] = {name: [] for name in header}
    for n, row in body:
        if len(row) != len(header):
            raise ValueError(
                f"{path}:{n}: expected {len(header)} fields ({', '.join(header)}), got {len(row)}. "
                + ("TSV fields are separated by tabs and never quoted." if fmt == "tsv" else "")
            )
        for name, value in zip(header, row):
            columns[name].append(value)
    return _columns(columns, [n for n, _ in body])


def check_text_values(columns: Columns, path: str, names: list[str | None]) -> None:
    """Raise naming the file and line if a text field holds something other than a string (JSON numbers, lists,
    objects); null is an empty text, as `peft_dect.data.read_texts` documents."""
    for name in names:
        if name is None or name not in columns:
            continue
        for n, value in zip(getattr(columns, "lines", range(1, len(columns[name]) + 1)), columns[name]):
            if value is not None and not isinstance(value, str):
                shown = json.dumps(value)[:60]
                raise ValueError(
                    f"{path}:{n}: the text field {name!r} is a JSON {type(value).__name__} ({shown}), not a string; "
                    "write texts as JSON strings (null is an empty text)."
                )


def require_columns(columns: dict[str, list], path: str, needed: list[str]) -> None:
    """Raise naming the file if any of `needed` is not a column."""
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing}; its columns are {list(columns)}.")


def iter_records(path: str, fmt: str | None = None) -> Iterator[tuple[int, dict]]:
    """(file line, record) for each record of a file, read lazily: memory does not grow with the file's length.

    The formats and checks are `read_columns`'s (one record per line; a CSV field over several lines, a repeated
    header name or a row of another width is refused naming the file and line); a `.txt` file or standard input
    gives `{"text": line}` per non-empty line. Unlike `read_columns`, a JSON Lines record missing a field that
    others have is not detected (that needs the whole file); the classifier's column check refuses it.
    """
    fmt = fmt or detect_format(path)
    if fmt not in (*FORMATS, "lines"):
        raise ValueError(f"Unknown format {fmt!r}; use one of {FORMATS}.")
    where = "standard input" if path == "-" else path
    handle = (
        io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
        if path == "-"
        else open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 (closed in the finally below)
    )
    state = {"line": 0}

    def lines() -> Iterator[str]:
        while True:
            try:
                line = handle.readline()
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{where}:{state['line'] + 1}: the input is not valid UTF-8 (byte {err.object[err.start]:#04x}); "
                    "convert it with `iconv -t UTF-8` or save it as UTF-8."
                ) from None
            if not line:
                return
            state["line"] += 1
            yield line

    try:
        if fmt == "lines":
            yield from _lazy_lines(lines(), state, where)
        elif fmt == "jsonl":
            yield from _lazy_jsonl(lines(), state, where)
        else:
            yield from _lazy_delimited(lines(), state, where, fmt)
    finally:
        if path != "-":
            handle.close()
        else:
            handle.detach()


def _lazy_lines(lines: Iterator[str], state: dict, where: str) -> Iterator[tuple[int, dict]]:
    found = False
    for line in lines:
        text = line.rstrip("\r\n")
        if text.strip():
            found = True
            yield state["line"], {"text": text}
    if not found:
        raise ValueError(f"{where} has no text: give one input per line.")


def _lazy_jsonl(lines: Iterator[str], state: dict, where: str) -> Iterator[tuple[int, dict]]:
    found = False
    for line in lines:
        if not line.strip():
            continue
        n = state["line"]
        row = json_line(line, where, n)
        found = True
        yield n, row
    if not found:
        raise ValueError(f'{where} has no JSON objects; it needs one object per line, e.g. {{"text": "..."}}.')


def _lazy_delimited(lines: Iterator[str], state: dict, where: str, fmt: str) -> Iterator[tuple[int, dict]]:
    reader = (
        csv.reader(lines, delimiter="\t", quotechar=None, quoting=csv.QUOTE_NONE)
        if fmt == "tsv"
        else csv.reader(lines)
    )
    header: list[str] | None = None
    start = 1
    found = False
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise ValueError(f"{where}:{start}: not valid {fmt.upper()} ({err}, by line {state['line']}).") from None
        end = state["line"]
        if any("\n" in field or "\r" in field for field in row):
            raise ValueError(
                f"{where}:{start}: a quoted field runs over lines {start}-{end}. peft-dect reads one record per "
                "line, so this is usually an unbalanced quote merging the rows after it: close the quote (write a "
                'quote inside a field as ""), or replace line breaks inside texts by spaces.'
            )
        n, start = start, end + 1
        if header is None:
            header = row
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise ValueError(
                    f"{where}:1: column(s) {repeated} appear more than once in the header; give every column its "
                    "own name."
                )
            continue
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{where}:{n}: expected {len(header)} fields ({', '.join(header)}), got {len(row)}. "
                + ("TSV fields are separated by tabs and never quoted." if fmt == "tsv" else "")
            )
        found = True
        yield n, dict(zip(header, row))
    if header is None:
        raise ValueError(f"{where} is empty; it needs a header row and at least one data row.")
    if not found:
        raise ValueError(f"{where} has a header row ({', '.join(header)}) but no data rows.")
