"""What one model pass gives DecT, and a cache so that no prompt is ever run twice."""

from __future__ import annotations

import json
import logging
import os
import tempfile
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


class FeatureCache:
    """In-memory map from a prompt key to its features, optionally persisted as safetensors shards in a folder.

    Keys already include the model fingerprint, template, label-word ids and prompt text (see `Backbone.keys`).
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._load_shards()

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def _load_shards(self) -> None:
        for path in sorted(self.directory.glob("features-*.safetensors")):
            try:
                with safe_open(str(path), framework="pt") as shard:
                    keys = json.loads((shard.metadata() or {})["keys"])
                    hidden, logits = shard.get_tensor("hidden"), shard.get_tensor("label_logits")
                if len(keys) != hidden.shape[0] or len(keys) != logits.shape[0]:
                    raise ValueError("key count does not match tensor rows")
            except (OSError, KeyError, ValueError, SafetensorError) as err:
                logger.warning("Ignoring unreadable feature cache shard %s (%s).", path, err)
                continue
            for i, key in enumerate(keys):
                self._store[key] = (hidden[i], logits[i])

    def absorb(self, other: FeatureCache) -> None:
        """Take over the in-memory features of another cache (not written to this cache's folder)."""
        for key, value in other._store.items():
            self._store.setdefault(key, value)

    def missing(self, keys: list[str]) -> list[int]:
        """Indices of the first occurrence of each key that is not cached yet."""
        seen: set[str] = set()
        out = []
        for i, k in enumerate(keys):
            if k not in self._store and k not in seen:
                seen.add(k)
                out.append(i)
        return out

    def gather(self, keys: list[str]) -> Features:
        rows = [self._store[k] for k in keys]
        return Features(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))

    def put(self, keys: list[str], features: Features) -> None:
        new = [i for i, k in enumerate(keys) if k not in self._store]
        for i in new:
            self._store[keys[i]] = (features.hidden[i], features.label_logits[i])
        if self.directory is not None and new:
            self._write_shard([keys[i] for i in new], features[torch.tensor(new)])

    def _write_shard(self, keys: list[str], features: Features) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".features-", suffix=".tmp", dir=self.directory)
        os.close(fd)
        tensors = {"hidden": features.hidden.contiguous(), "label_logits": features.label_logits.contiguous()}
        try:
            save_file(tensors, tmp, metadata={"keys": json.dumps(keys)})
            os.chmod(tmp, 0o644)
            name = f"features-{keys[0][:16]}-{len(keys)}.safetensors"
            os.replace(tmp, self.directory / name)
        finally:
            if os.path.exists(tmp):  # an interrupted write leaves no partial shard behind
                os.unlink(tmp)
