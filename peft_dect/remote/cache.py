"""The request cache of a served model: answers by (kind, prompt), in memory and in a JSON-lines file, so that no
prompt is sent twice, also across runs."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path


logger = logging.getLogger(__name__)


class ResponseCache:
    """Answers by (kind, prompt) for one endpoint and model, in memory and appended to a JSON-lines file.

    The file's first line names the endpoint, model and request settings it was written for; a file written for
    another one is ignored with a warning (and not appended to). A torn line (an interrupted write, even one cut inside
    a multi-byte character) is skipped with a warning; the other lines are kept. `valid(kind, value)` checks each
    record read from the file as the client checks a server's answer, so that a bad value written by an older
    version (a NaN, say) is asked again instead of failing every run.
    """

    def __init__(
        self, path: str | os.PathLike | None, identity: dict, valid: Callable[[str, object], bool] | None = None
    ) -> None:
        self.identity = identity
        self.valid = valid
        self.path = Path(path) if path is not None else None
        self._store: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        self._writable = self.path is not None
        if self.path is not None and self.path.exists() and self.path.stat().st_size:
            self._load()

    def _load(self) -> None:
        # Bytes split on b"\n" and decoded line by line: a write torn inside a multi-byte character spoils its own
        # line only (and not splitlines(): U+2028 and friends may occur inside a record).
        lines = self.path.read_bytes().split(b"\n")
        try:
            header = json.loads(lines[0].decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, IndexError):
            header = None
        if header != {"peft_dect_cache": 1, **self.identity}:
            self._writable = False
            logger.warning(
                "Ignoring the request cache %s: it was written for %s, not for %s. Give each endpoint and model "
                "its own cache file.",
                self.path,
                {k: v for k, v in (header if isinstance(header, dict) else {}).items() if k != "peft_dect_cache"}
                or "something else",
                self.identity,
            )
            return
        skipped = 0
        for line in lines[1:]:
            if not line:
                continue
            try:
                record = json.loads(line.decode("utf-8"))
                kind, prompt, value = record["k"], record["p"], record["v"]
                if not isinstance(kind, str) or not isinstance(prompt, str):
                    raise TypeError("kind and prompt must be strings")
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, RecursionError):
                skipped += 1
                continue
            if self.valid is not None and not self.valid(kind, value):
                skipped += 1
                continue
            self._store[(kind, prompt)] = value
        if skipped:
            logger.warning(
                "Skipping %d unreadable line(s) of the request cache %s (an interrupted write, or a value the server "
                "should not have sent): those prompts are asked again.",
                skipped,
                self.path,
            )

    def __len__(self) -> int:
        return len(self._store)

    def _last_byte(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1)

    def get(self, kind: str, prompt: str):
        return self._store.get((kind, prompt))

    def put(self, kind: str, prompts: Sequence[str], values: Sequence) -> None:
        with self._lock:
            for p, v in zip(prompts, values):
                self._store[(kind, p)] = v
            if not self._writable:
                return
            new_file = not self.path.exists() or not self.path.stat().st_size
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = not new_file and self._last_byte() != b"\n"
            with open(self.path, "a", encoding="utf-8") as f:
                if new_file:
                    f.write(json.dumps({"peft_dect_cache": 1, **self.identity}) + "\n")
                if torn:  # an interrupted write left half a line: end it, so the next record stays whole
                    f.write("\n")
                for p, v in zip(prompts, values):
                    f.write(_record(kind, p, v))


def _record(kind: str, prompt: str, value) -> str:
    """One line of the file: readable UTF-8, or escaped where the text is not valid Unicode (a lone surrogate in a
    prompt, or in a token a server sent as half a UTF-8 character), which UTF-8 cannot hold."""
    line = json.dumps({"k": kind, "p": prompt, "v": value}, ensure_ascii=False) + "\n"
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps({"k": kind, "p": prompt, "v": value}) + "\n"
    return line
