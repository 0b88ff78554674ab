"""Streaming prediction: inputs of any number in batches, memory independent of their count, results as they come.

`predict_stream(classifier, inputs)` yields one record per input (label, probabilities, and with `reject` / `alpha`
the unknown score and the prediction set) for every peft-dect classifier, through the classifier interface only:
`checked_logits`, `decide`, `decide_or_reject`, `calibration_or_error`, `classes`, `temperature`, `read_inputs`, and
`streaming()`, under which a batch's features (or a served model's answers) are not kept once it is predicted.

`predict_file(classifier, input_path, output_path)` writes those records as JSON Lines, one line per input, flushed
per batch, and resumes: run again after an interruption, it continues after the last complete line (a torn last line
is cut off), so that nothing is written twice and nothing lost. A sidecar file `<output>.stream.json` names the input
(path, size, SHA-256) and the classifier it was written for; an output of another input or classifier is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .io import iter_records
from .settings import check_int
from .uncertainty import check_alpha, prediction_sets


logger = logging.getLogger(__name__)

STREAM_FORMAT = 1
SIDECAR_SUFFIX = ".stream.json"
HASH_CHUNK = 2**20


def batches_of(inputs: Any, batch_size: int) -> Iterator[Any]:
    """`inputs` cut into batches the classifier interface reads: a `datasets.Dataset` (sliced, so nothing is
    loaded beyond a batch), a dict of columns, or any iterable of texts, (text_a, text_b) pairs or row dicts (an
    `IterableDataset`, a generator, a list): row dicts become a dict of columns per batch."""
    check_int("batch_size", batch_size, 1)
    if isinstance(inputs, str):
        raise TypeError(
            "predict_stream takes an iterable of texts (or a Dataset); to predict a file use predict_file."
        )
    if hasattr(inputs, "column_names") and hasattr(inputs, "select") and hasattr(inputs, "__len__"):
        for start in range(0, len(inputs), batch_size):  # a datasets.Dataset: memory-mapped, sliced per batch
            yield inputs[start : start + batch_size]
        return
    if isinstance(inputs, Mapping):
        columns = list(inputs)
        n = len(inputs[columns[0]]) if columns else 0
        for start in range(0, n, batch_size):
            yield {c: list(inputs[c][start : start + batch_size]) for c in columns}
        return
    if not isinstance(inputs, Iterable):
        raise TypeError(
            f"predict_stream takes a Dataset, a dict of columns or an iterable of texts, pairs or row dicts; got "
            f"{type(inputs).__name__}."
        )
    iterator = iter(inputs)
    while chunk := list(itertools.islice(iterator, batch_size)):
        yield _columns_of(chunk) if isinstance(chunk[0], Mapping) else chunk


def _columns_of(rows: list[Mapping]) -> dict[str, list]:
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {name: [row.get(name) for row in rows] for name in names}


def _quiet_kwargs(classifier, kwargs: dict) -> dict:
    """The classifier's own per-call progress bars off (the stream has one), unless the caller set them."""
    try:
        takes = "show_progress" in inspect.signature(classifier.predict_logits).parameters
    except (TypeError, ValueError):
        takes = False
    return {"show_progress": False, **kwargs} if takes else kwargs


def predict_stream(
    classifier,
    inputs: Any,
    *args: Any,
    batch_size: int = 32,
    reject: bool | float = False,
    reject_rate: float | None = None,
    alpha: float | None = None,
    show_progress: bool = True,
    **kwargs: Any,
) -> Iterator[dict[str, Any]]:
    """One record per input, batch by batch: `{"text", "label", "probabilities": {class: p}}`, plus
    `"unknown_score"` with `reject` (the label is then the classifier's `reject_label` above the threshold, as
    `predict(reject=...)`) and `"set"` (the conformal prediction set) with `alpha`.

    Memory does not grow with the number of inputs: each batch's features are dropped once it is predicted (the
    classifier's `streaming()`; the feature cache is bypassed, so streamed texts are neither read from nor added
    to it). Extra arguments go to `predict_logits` (DecT takes the tokenizer there). Stopping the iteration early
    stops the work. Bad options raise here, before the first record is asked for.
    """
    check_int("batch_size", batch_size, 1)
    if isinstance(inputs, str):
        raise TypeError(
            "predict_stream takes an iterable of texts (or a Dataset); to predict a file use predict_file."
        )
    threshold = None
    if alpha is not None:
        alpha = check_alpha(alpha)
        threshold = classifier.calibration_or_error("A prediction set").set_threshold(alpha)
    if reject is not False and reject is not None:
        classifier.rejection_threshold(reject, reject_rate)  # a bad option fails before any model pass
    options = {"reject": reject, "reject_rate": reject_rate, "threshold": threshold, "show_progress": show_progress}
    return _records(classifier, inputs, args, _quiet_kwargs(classifier, kwargs), batch_size, **options)


def _records(classifier, inputs, args: tuple, kwargs: dict, batch_size: int, *, reject, reject_rate, threshold,
             show_progress: bool) -> Iterator[dict[str, Any]]:  # fmt: skip
    total = len(inputs) if hasattr(inputs, "__len__") and not isinstance(inputs, Mapping) else None
    classes = list(classifier.classes)
    streaming = getattr(classifier, "streaming", None)
    with tqdm(total=total, desc="predict", unit="text", disable=not show_progress) as bar:
        for batch in batches_of(inputs, batch_size):
            with streaming() if streaming is not None else contextlib.nullcontext():
                texts, _ = classifier.read_inputs(batch)
                logits = classifier.checked_logits(batch, *args, **kwargs)
            probs = classifier.probabilities_of(logits)
            extra: dict[str, list] = {}
            if reject is not False and reject is not None:
                labels, extra["unknown_score"] = classifier.decide_or_reject(logits, reject, reject_rate)
            else:
                labels = classifier.decide(logits)
            if threshold is not None:
                extra["set"] = [[classes[c] for c in row] for row in prediction_sets(probs, threshold)]
            for i, (text, label, row) in enumerate(zip(texts, labels, probs.tolist())):
                record = {"text": text, "label": label, "probabilities": dict(zip(classes, row))}
                yield record | {k: v[i] for k, v in extra.items()}
            bar.update(len(texts))


# ---------------------------------------------------------------- files, with resumption
def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What names an input file's content: its absolute path, size and SHA-256 (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return {"path": str(Path(path).resolve()), "bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def sidecar_path(output_path: str | os.PathLike) -> Path:
    """Where `predict_file` records what an output file was written for."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name + SIDECAR_SUFFIX)


def complete_lines(path: Path) -> tuple[int, int]:
    """(complete lines, byte length of them) of a file: a last line without its newline is not complete."""
    count, end, offset = 0, 0, 0
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            newlines = chunk.count(b"\n")
            if newlines:
                count += newlines
                end = offset + chunk.rindex(b"\n") + 1
            offset += len(chunk)
    return count, end


def last_record(path: Path, end: int) -> dict | None:
    """The JSON object of the last complete line (ending at byte `end`), or None if there is none."""
    if end == 0:
        return None
    with open(path, "rb") as fh:
        start = max(0, end - HASH_CHUNK)
        while True:
            fh.seek(start)
            block = fh.read(end - start)
            cut = block.rstrip(b"\n").rfind(b"\n")
            if cut >= 0 or start == 0:
                line = block[cut + 1 :]
                break
            start = max(0, start - HASH_CHUNK)
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _refuse(output: Path, why: str) -> ValueError:
    return ValueError(
        f"{output} cannot be resumed: {why}. Delete it (and {sidecar_path(output).name}), choose another output "
        "file, or pass overwrite=True (--overwrite) to start it again."
    )


def _resume_point(output: Path, meta: dict, overwrite: bool) -> int:
    """Records already written to `output` for the same input and classifier (the file cut after its last complete
    line); 0 for a new or overwritten output. Refuses an output written for something else."""
    sidecar = sidecar_path(output)
    exists = output.exists() and output.stat().st_size > 0
    if overwrite or not exists:
        return 0
    if not sidecar.is_file():
        raise _refuse(output, f"it exists but has no {sidecar.name} (it was not written by predict_file)")
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _refuse(output, f"{sidecar.name} is not readable JSON ({err})") from None
    if not isinstance(recorded, dict):
        raise _refuse(output, f"{sidecar.name} is not a JSON object")
    for part, name in (("input", "input file"), ("classifier", "classifier (adapter)"), ("options", "options")):
        if recorded.get(part) != meta[part]:
            raise _refuse(
                output,
                f"it holds predictions of another {name}: {json.dumps(recorded.get(part))[:300]}, not "
                f"{json.dumps(meta[part])[:300]}",
            )
    done, end = complete_lines(output)
    if output.stat().st_size > end:
        logger.warning("%s ends in a partly written line (an interrupted run); it is cut off and redone.", output)
    last = last_record(output, end)
    if done and last is None:
        raise _refuse(output, f"its line {done} is not a JSON record")
    with open(output, "r+b") as fh:
        fh.truncate(end)
    return done


def _write_sidecar(output: Path, meta: dict) -> None:
    sidecar = sidecar_path(output)
    tmp = sidecar.with_name(sidecar.name + f".tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps({"peft_dect_stream": STREAM_FORMAT, **meta}, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, sidecar)
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_resumed_text(output: Path, record: dict | None, text: str, done: int) -> None:
    """The last line written must be the prediction of the input it stands for (a guard beyond the sidecar)."""
    if record is not None and record.get("text") != text:
        raise _refuse(
            output,
            f"its line {done} is the prediction of {str(record.get('text'))[:60]!r}, but input {done} is "
            f"{text[:60]!r}",
        )


def predict_file(
    classifier,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *args: Any,
    batch_size: int = 32,
    reject: bool | float = False,
    reject_rate: float | None = None,
    alpha: float | None = None,
    identity: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """Predict every record of `input_path` (.txt, .csv, .tsv or .jsonl, read lazily) into `output_path` (JSON Lines,
    one `predict_stream` record per input, in input order, flushed and synced per batch).

    Run again after an interruption, it resumes after the last complete line: the records written are kept, a torn
    last line is cut off, and the batches go on where they stopped, aligned as in an uninterrupted run (so the
    output is the one an uninterrupted run writes). The sidecar `<output_path>.stream.json` records the input's
    path, size and SHA-256, the classifier (`identity`, by default its type; the CLI gives the adapter folder's
    files) with its classes, and the options; an existing output written for anything else is refused with a
    ValueError. `overwrite=True` starts the output again. The texts are read from the columns the classifier reads
    (its `text_column`, else the usual names). Returns {"input", "output", "written", "resumed_from", "total"}.
    """
    if str(input_path) == "-":
        raise ValueError("predict_file reads a file (it resumes by the file's identity); save standard input first.")
    input_path, output = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"{input_path} is not a file.")
    if output.exists() and output.resolve() == input_path.resolve():
        raise ValueError(f"The output file must not be the input file ({input_path}).")
    check_int("batch_size", batch_size, 1)
    who = dict(identity) if identity is not None else {"type": type(classifier).__name__}
    meta = {
        "input": file_identity(input_path),
        "classifier": who | {"classes": list(classifier.classes)},
        "options": {"reject": reject, "reject_rate": reject_rate, "alpha": alpha},
    }
    done = _resume_point(output, meta, overwrite)
    records = (row for _, row in iter_records(str(input_path)))
    if done:
        resumed = last_record(output, output.stat().st_size)
        for _ in itertools.islice(records, done - 1):
            pass
        last_input = next(records, None)
        if last_input is None:
            raise _refuse(output, f"it has {done} lines, more than the input has records")
        texts, _ = classifier.read_inputs(_columns_of([last_input]))
        _check_resumed_text(output, resumed, texts[0], done)
        logger.info("Resuming %s after %d records.", output, done)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        _write_sidecar(output, meta)
        output.write_bytes(b"")
    written = 0
    first = (-done) % batch_size  # the rest of the interrupted batch: later batches are those of one run
    head = list(itertools.islice(records, first)) if first else []
    chunks = itertools.chain([head] if head else [], _chunks(records, batch_size))
    with (
        open(output, "a", encoding="utf-8") as out,
        tqdm(initial=done, desc="predict", unit="text", disable=not show_progress) as bar,
    ):
        for chunk in chunks:
            options = {"reject": reject, "reject_rate": reject_rate, "alpha": alpha, "show_progress": False}
            found = predict_stream(classifier, chunk, *args, batch_size=len(chunk), **options, **kwargs)
            lines = "".join(json.dumps(record) + "\n" for record in found)
            out.write(lines)
            out.flush()
            os.fsync(out.fileno())
            written += len(chunk)
            bar.update(len(chunk))
    return {
        "input": str(input_path),
        "output": str(output),
        "written": written,
        "resumed_from": done,
        "total": done + written,
    }


def _chunks(iterator: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
