"""What one model pass gives DecT, and a cache so that no prompt is ever run twice."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


logger = logging.getLogger(__name__)


@dataclass
class Features:
    """Per-input features at the prediction position.

    hidden: (N, H) final hidden state; label_logits: (N, C) label-word log-probabilities per class.
    """

    hidden: torch.Tensor
    label_logits: torch.Tensor

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def __getitem__(self, index) -> Features:
        return Features(self.hidden[index], self.label_logits[index])

    @staticmethod
    def cat(parts: list[Features]) -> Features:
        return Features(torch.cat([p.hidden for p in parts]), torch.cat([p.label_logits for p in parts]))

    def check_finite(self, index: list[int] | None = None, texts: list[str] | None = None) -> None:
        """Raise if any feature is NaN or infinite (e.g. fp16 overflow), naming the first bad input.

        `index` maps rows to the caller's input numbers; `texts` (one per row) lets the message quote the input.
        """
        bad = ~(torch.isfinite(self.hidden).all(-1) & torch.isfinite(self.label_logits).all(-1))
        if bad.any():
            row = int(bad.nonzero()[0, 0])
            first = index[row] if index is not None else row
            quote = f" ({texts[row][:60]!r})" if texts is not None else ""
            raise ValueError(
                f"The model produced NaN or infinite features for {int(bad.sum())} input(s), the first at index "
                f"{first}{quote}. This usually means fp16 overflow: load the model in float32 or bfloat16."
            )


def check_max_bytes(max_bytes) -> int | None:
    """A cache bound as a positive number of bytes, or None (no bound); else a ValueError naming the fix."""
    if max_bytes is None:
        return None
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(
            f"The feature cache's max_bytes must be a positive integer (bytes of memory), or None for no bound; got "
            f"{max_bytes!r}."
        )
    return max_bytes


def row_bytes(row: tuple[torch.Tensor, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in row)


# More shards than this in a cache folder are merged into one when the cache is opened (one shard is written per
# extraction with new inputs, so 1,000 predict calls would otherwise leave 1,000 files to open every time).
COMPACT_ABOVE = 32


class FeatureCache:
    """In-memory map from a prompt key to its features, optionally persisted as safetensors shards in a folder.

    Keys already include the model fingerprint, template, label-word ids and prompt text (see `Backbone.keys`).
    Shards get unique names (a random token), so processes sharing a folder never overwrite each other's; more
    than `COMPACT_ABOVE` shards are merged into one when the cache is opened, atomically. Rows that are not
    finite (a damaged file) are dropped with a warning and recomputed. A folder that cannot be written (read-only,
    full disk) is a warning, not an error: the features stay in memory and the work goes on.

    `max_bytes` bounds the memory the rows take (None: no bound): past it the least recently used rows are dropped
    from memory (a folder keeps them on disk until it is reopened), never those of the extraction in progress
    before they are gathered, and none while `held()` (a group of calls sharing one model pass).
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, max_bytes: int | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.writable = self.directory is not None
        self.max_bytes = check_max_bytes(max_bytes)
        self.bytes = 0
        self.holds = 0  # open `held()` contexts: while any is open, no row is dropped
        self._store: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.directory)
                os.close(fd)
                os.unlink(probe)
            except OSError as err:
                self._not_writable(err)
            if self.directory.is_dir():
                self._load_shards()

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def _not_writable(self, err: OSError) -> None:
        self.writable = False
        logger.warning(
            "The feature cache folder %s cannot be written (%s): features are kept in memory only for this run. "
            "Free disk space, fix the folder's permissions or choose another cache_dir.",
            self.directory,
            err.strerror or err,
        )

    def _load_shards(self) -> None:
        loaded = []
        for path in sorted(self.directory.glob("features-*.safetensors")):
            try:
                with safe_open(str(path), framework="pt") as shard:
                    metadata = shard.metadata() or {}
                    keys = json.loads(metadata["keys"])
                    aliases = json.loads(metadata["hidden_keys"]) if "hidden_keys" in metadata else None
                    hidden, logits = shard.get_tensor("hidden"), shard.get_tensor("label_logits")
                if hidden.dim() != 2 or logits.dim() != 2:
                    raise ValueError("features are not (rows, width) matrices")
                if len(keys) != hidden.shape[0] or len(keys) != logits.shape[0]:
                    raise ValueError("key count does not match tensor rows")
                if aliases is not None and (not isinstance(aliases, list) or len(aliases) != len(keys)):
                    raise ValueError("hidden-state key count does not match tensor rows")
            except FileNotFoundError:
                continue  # merged into a compacted shard by another process meanwhile
            except (OSError, KeyError, ValueError, TypeError, SafetensorError) as err:
                logger.warning("Ignoring unreadable feature cache shard %s (%s).", path, err)
                continue
            finite = torch.isfinite(hidden).all(-1) & torch.isfinite(logits).all(-1)
            if not bool(finite.all()):
                logger.warning(
                    "Ignoring %d row(s) of feature cache shard %s that are NaN or infinite (a damaged file): "
                    "those inputs are recomputed.",
                    int((~finite).sum()),
                    path,
                )
            for i, key in enumerate(keys):
                if finite[i]:
                    self._add(key, (hidden[i], logits[i]))
                    if aliases is not None and aliases[i] not in self._store:
                        self._add(aliases[i], (hidden[i], hidden.new_zeros(0)))
            loaded.append(path)
        if len(loaded) > COMPACT_ABOVE and self.writable:
            self._compact(loaded)
        self._evict(set())

    def _add(self, key: str, row: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self.max_bytes is not None:  # a row of a batch or shard tensor would keep all of it alive
            row = (row[0].clone(), row[1].clone())
        old = self._store.pop(key, None)
        if old is not None:
            self.bytes -= row_bytes(old)
        self._store[key] = row
        self.bytes += row_bytes(row)

    def limit(self, max_bytes: int | None) -> None:
        """Set the memory bound (None: none) and drop least recently used rows to meet it."""
        self.max_bytes = check_max_bytes(max_bytes)
        self._evict(set())

    @contextlib.contextmanager
    def held(self):
        """Within, no row is dropped to meet `max_bytes` (it is met again on exit): the rows one extraction adds stay
        for the next extractions of a group of calls (several adapters' predictions from one model pass)."""
        self.holds += 1
        try:
            yield self
        finally:
            self.holds -= 1
            self._evict(set())

    def _evict(self, keep: set[str]) -> None:
        """Drop least recently used rows (never those in `keep`) until the rows fit in `max_bytes` (none while
        `held`)."""
        if self.max_bytes is None or self.holds:
            return
        for key in list(self._store):
            if self.bytes <= self.max_bytes:
                return
            if key not in keep:
                self.bytes -= row_bytes(self._store.pop(key))

    def _compact(self, shards: list[Path]) -> None:
        """Rewrite the features of `shards` as one shard (grouped by width), then delete them."""
        groups: dict[tuple[int, int], list[str]] = {}
        for key, (hidden, logits) in self._store.items():
            groups.setdefault((hidden.shape[0], logits.shape[0]), []).append(key)
        for keys in groups.values():
            rows = [self._store[k] for k in keys]
            if not self._write_shard(
                keys, Features(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))
            ):
                return  # nothing is deleted unless its features are safely in the new shards
        for path in shards:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def absorb(self, other: FeatureCache) -> None:
        """Take over the in-memory features of another cache (not written to this cache's folder)."""
        for key, value in other._store.items():
            if key not in self._store:
                self._add(key, value)
        self._evict(set())

    def missing(self, keys: list[str], widths: tuple[int, int] | None = None) -> list[int]:
        """Indices of the first occurrence of each key that is not cached yet.

        With `widths` (hidden size, classes), a cached entry of another width (a foreign or edited shard) is
        dropped with a warning and counted as missing, so it is recomputed.
        """
        if widths is not None:
            wrong = [
                k for k in dict.fromkeys(keys)
                if k in self._store and (self._store[k][0].shape[0], self._store[k][1].shape[0]) != tuple(widths)
            ]  # fmt: skip
            if wrong:
                logger.warning(
                    "Ignoring %d cached feature row(s) of another width than this model's (hidden size %d, %d "
                    "classes): a shard from elsewhere in the cache folder; those inputs are recomputed.",
                    len(wrong),
                    *widths,
                )
                for k in wrong:
                    self.bytes -= row_bytes(self._store.pop(k))
        seen: set[str] = set()
        out = []
        for i, k in enumerate(keys):
            if k in self._store:
                self._store.move_to_end(k)  # recently used: evicted last
            elif k not in seen:
                seen.add(k)
                out.append(i)
        return out

    def rows(self, keys: list[str]) -> Features:
        """The features of `keys` (all cached) as they are, without bringing the cache within its bound (an
        extraction in progress reads them before it is gathered)."""
        rows = [self._store[k] for k in keys]
        return Features(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))

    def gather(self, keys: list[str]) -> Features:
        """The features of `keys` (all cached), checked to be finite and of one width; then, with `max_bytes`, the
        cache is brought back within its bound (these rows were the last used)."""
        rows = [self._store[k] for k in keys]
        self._evict(set())
        try:
            feats = Features(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))
        except RuntimeError as err:
            raise ValueError(
                f"The cached features of these inputs have different widths ({err}): the cache mixes models. "
                "Clear the cache folder (or give this model its own cache_dir)."
            ) from None
        bad = ~(torch.isfinite(feats.hidden).all(-1) & torch.isfinite(feats.label_logits).all(-1))
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} cached feature row(s) are NaN or infinite, the first for input "
                f"{int(bad.nonzero()[0, 0])}: the cache was damaged in memory. Clear the cache (a new FeatureCache, "
                "or delete the cache folder) and run again."
            )
        return feats

    def put(
        self,
        keys: list[str],
        features: Features,
        *,
        keep: Sequence[str] = (),
        hidden_keys: Sequence[str] | None = None,
    ) -> None:
        """Add the features of `keys`; with `max_bytes`, older rows make room, except `keys` and `keep` (the rest
        of the extraction in progress, gathered next). `hidden_keys` (one per row) also keep each row's hidden state
        alone under a second key (what does not depend on the label words; written in the same shard)."""
        new = [i for i, k in enumerate(keys) if k not in self._store]
        for i in new:
            self._add(keys[i], (features.hidden[i], features.label_logits[i]))
        if hidden_keys is not None:
            self._add_hidden([hidden_keys[i] for i in new], features.hidden[torch.tensor(new, dtype=torch.long)])
        if self.directory is not None and self.writable and new:
            aliases = [hidden_keys[i] for i in new] if hidden_keys is not None else None
            self._write_shard([keys[i] for i in new], features[torch.tensor(new)], aliases)
        self._evict(set(keys) | set(keep) | set(hidden_keys or ()))

    def add_hidden(self, keys: Sequence[str], hidden: torch.Tensor, *, keep: Sequence[str] = ()) -> None:
        """Keep hidden states (N, H) alone (no label-word scores) under `keys`, in memory; with `max_bytes`, older
        rows make room, except `keep`."""
        self._add_hidden(keys, hidden)
        self._evict(set(keep))

    def _add_hidden(self, keys: Sequence[str], hidden: torch.Tensor) -> None:
        empty = hidden.new_zeros(0)
        for key, row in zip(keys, hidden):
            if key not in self._store:
                self._add(key, (row, empty))

    def _write_shard(self, keys: list[str], features: Features, hidden_keys: list[str] | None = None) -> bool:
        """Write one shard under a unique name (atomically); False, with a warning, if the folder refuses it."""
        tmp = None
        tensors = {"hidden": features.hidden.contiguous(), "label_logits": features.label_logits.contiguous()}
        metadata = {"keys": json.dumps(keys)}
        if hidden_keys is not None:
            metadata["hidden_keys"] = json.dumps(hidden_keys)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".features-", suffix=".tmp", dir=self.directory)
            os.close(fd)
            save_file(tensors, tmp, metadata=metadata)
            os.chmod(tmp, 0o644)
            name = f"features-{secrets.token_hex(8)}-{os.getpid()}-{len(keys)}.safetensors"
            os.replace(tmp, self.directory / name)
            return True
        except (OSError, SafetensorError) as err:
            self._not_writable(err if isinstance(err, OSError) else OSError(str(err)))
            return False
        finally:
            if tmp is not None and os.path.exists(tmp):  # an interrupted write leaves no partial shard behind
                os.unlink(tmp)
