"""One JSON record per grid cell: where it lives, atomic writes, tolerant reads, peak memory of a cell."""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)

SCHEMA = "peft-dect-grid/1"
REQUIRED = ("task", "method", "shots", "seed", "metric", "score", "train_seconds")


@dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    task: str
    method: str
    shots: int
    seed: int

    def path(self, root: Path) -> Path:
        return Path(root) / self.task / self.method / f"{self.shots}-{self.seed}.json"


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a record atomically (temporary file in the same folder, then rename): a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"schema": SCHEMA, **record}, fh, indent=1)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path, cell: Cell | None = None) -> dict[str, Any] | None:
    """The record in `path`, or None (with a warning) if it is unreadable, half-written, foreign or another cell's."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        logger.warning("Skipping %s: not a readable JSON record (%s).", path, err)
        return None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA or any(k not in record for k in REQUIRED):
        logger.warning(
            "Skipping %s: not a grid record (schema %r expected with %s).", path, SCHEMA, ", ".join(REQUIRED)
        )
        return None
    if cell is not None and (record["task"], record["method"], record["shots"], record["seed"]) != (
        cell.task,
        cell.method,
        cell.shots,
        cell.seed,
    ):
        logger.warning("Skipping %s: it holds the record of another cell.", path)
        return None
    return record


def read_all(root: Path) -> list[dict[str, Any]]:
    """Every valid record under `root`; bad or foreign JSON files are skipped with a warning."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.rglob("*.json")):
        record = read_record(path)
        if record is not None:
            out.append(record)
    return out


class PeakMemory:
    """Peak resident memory of the process during a block, in MB.

    On Linux the kernel's high-water mark (VmHWM) is reset through /proc/self/clear_refs, so the peak is that of the
    block alone (it includes everything resident, e.g. the loaded model). Elsewhere it falls back to
    `resource.getrusage` ru_maxrss, the peak since the process started.
    """

    def __enter__(self) -> PeakMemory:
        self.source = "getrusage ru_maxrss (process peak since start)"
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            if _vm_hwm_kb() is not None:
                self.source = "VmHWM after reset via /proc/self/clear_refs (peak RSS during the cell)"
        except OSError:
            pass
        self.mb = 0.0
        return self

    def __exit__(self, *exc) -> None:
        kb = _vm_hwm_kb() if self.source.startswith("VmHWM") else None
        if kb is None:
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        self.mb = kb / 1024


def _vm_hwm_kb() -> int | None:
    try:
        match = re.search(r"VmHWM:\s+(\d+)\s*kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) if match else None
