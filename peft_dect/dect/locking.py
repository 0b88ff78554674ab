"""One lock per DecT model: its feature cache, tokenizer state and decoder tensors are shared by every call."""

from __future__ import annotations

import functools


def serialized(method):
    """Run `method` under the model's lock: its feature cache, tokenizer state and decoder tensors are shared, so
    `fit`/`predict`/`evaluate` called from several threads run one at a time (results equal sequential calls).

    The object needs a re-entrant `lock` (a `threading.RLock`): serialized methods call one another.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper
