"""Micro-batching: concurrent requests for adapters of one group become one backbone batch.

Every adapter belongs to a group (`group_of(adapter)`, any hashable; by default each adapter is its own): the
adapters of a group are those one backbone pass serves, so the batch function runs their queries as one batch and
derives each adapter's answers from the shared features. The batcher knows nothing else of adapters or models.

Requests wait in one bounded queue. A single worker takes the group of the oldest waiting request and, once that
request has waited `max_wait` seconds or `max_batch` texts of the group are waiting, runs all of them (oldest
first, up to `max_batch` texts; a larger request goes alone) as one call in a worker thread, so the event loop keeps
accepting requests meanwhile. Requests that arrive while a batch runs are batched next. A full queue is refused at
once (`QueueFull`, 503 with Retry-After), never left to grow; a request whose caller gave up is dropped unrun.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


RunGroup = Callable[[Mapping[str, Sequence[Any]]], Mapping[str, Sequence[Any]]]


class QueueFull(Exception):
    """The queue holds `max_queue` texts already: the request is refused (answer 503, retry later)."""


@dataclass
class Waiting:
    adapter: str
    query: Any
    size: int
    future: asyncio.Future
    since: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """What the batcher has done: backbone batches run, the texts in them and the adapters answered from them (an
    adapter counted once per batch it had queries in; for `/metrics`)."""

    batches: int = 0
    texts: int = 0
    adapters: int = 0
    sizes: list[int] = field(default_factory=list)  # texts per batch since the last `drain_sizes`

    def drain_sizes(self) -> list[int]:
        sizes, self.sizes = self.sizes, []
        return sizes


class MicroBatcher:
    """Batch concurrent queries per group of adapters and run them through `run(queries_by_adapter)`.

    Args:
        run: the batch function (blocking; called in one worker thread, one batch at a time): given
            {adapter: its queries, oldest first} of one group, it returns {adapter: one answer per query, in that
            order}; an answer may be an exception (that query's error).
        group_of: the group of an adapter (hashable; adapters of a group share a batch); default: the adapter itself.
        max_batch: texts per batch at most (a single larger query runs alone); 1 query per batch when `enabled`
            is False.
        max_wait: seconds the oldest query waits for others before its batch runs.
        max_queue: texts waiting at most; beyond it `submit` raises `QueueFull`.
        enabled: False runs every query on its own (the baseline the benchmark compares against).
    """

    def __init__(
        self,
        run: RunGroup,
        *,
        group_of: Callable[[str], Hashable] | None = None,
        max_batch: int = 64,
        max_wait: float = 0.01,
        max_queue: int = 1024,
        enabled: bool = True,
    ) -> None:
        for label, value in (("max_batch", max_batch), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}.")
        if not isinstance(max_wait, (int, float)) or not 0 <= max_wait <= 10:
            raise ValueError(f"max_wait must be a number of seconds from 0 to 10, got {max_wait!r}.")
        if not callable(run) or (group_of is not None and not callable(group_of)):
            raise TypeError(
                f"run and group_of must be callables, got {type(run).__name__} and {type(group_of).__name__}; pass "
                "the batch function and adapter -> group (or group_of=None: one group per adapter)."
            )
        self.run = run
        self.group_of = group_of if group_of is not None else same_adapter
        self.max_batch = max_batch
        self.max_wait = float(max_wait)
        self.max_queue = max_queue
        self.enabled = enabled
        self.queues: OrderedDict[Hashable, deque[Waiting]] = OrderedDict()  # per group
        self.waiting = 0  # texts queued, not yet taken into a batch
        self.stats = BatchStats()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peft-dect-batch")
        self.wake: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None

    # ---------------------------------------------------------------- life cycle
    def start(self) -> None:
        """Start the worker on the running event loop."""
        self.wake = asyncio.Event()
        self.worker = asyncio.get_running_loop().create_task(self.loop(), name="peft-dect-batcher")

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
        for queue in self.queues.values():
            for item in queue:
                if not item.future.done():
                    item.future.set_exception(RuntimeError("The server is shutting down."))
        self.queues.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def call(self, func: Callable, *args: Any) -> Any:
        """Run `func(*args)` in the batch thread (e.g. loading an adapter): one thing at a time uses the model."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    # ---------------------------------------------------------------- the queue
    async def submit(self, adapter: str, query: Any, size: int) -> Any:
        """Queue `query` (of `size` texts) for `adapter` and wait for its answer; `QueueFull` when no room."""
        if self.worker is None:
            raise RuntimeError("MicroBatcher.start() was not called (the app's lifespan starts it).")
        if self.waiting + size > self.max_queue:
            raise QueueFull(f"{self.waiting} texts are queued (at most {self.max_queue}); retry shortly.")
        item = Waiting(adapter, query, size, asyncio.get_running_loop().create_future())
        self.queues.setdefault(self.group_of(adapter), deque()).append(item)
        self.waiting += size
        self.wake.set()
        try:
            return await item.future
        finally:
            if not item.future.done():  # the caller gave up (timeout, disconnect): the worker skips it
                item.future.cancel()

    def oldest(self) -> tuple[Hashable, Waiting] | None:
        """The group whose first live query has waited longest, dropping queries whose caller gave up."""
        best = None
        for group, queue in list(self.queues.items()):
            while queue and queue[0].future.done():
                self.waiting -= queue.popleft().size
            if not queue:
                del self.queues[group]
            elif best is None or queue[0].since < best[1].since:
                best = (group, queue[0])
        return best

    def take(self, group: Hashable) -> list[Waiting]:
        """The live queries of `group` for one batch: oldest first, up to `max_batch` texts (at least one)."""
        queue = self.queues[group]
        batch: list[Waiting] = []
        texts = 0
        while queue:
            item = queue[0]
            if item.future.done():
                self.waiting -= queue.popleft().size
                continue
            if batch and (not self.enabled or texts + item.size > self.max_batch):
                break
            batch.append(queue.popleft())
            self.waiting -= item.size
            texts += item.size
        if not queue:
            del self.queues[group]
        return batch

    def ready(self, group: Hashable, item: Waiting) -> float:
        """Seconds until the batch of `group` should run (0: now)."""
        if not self.enabled:
            return 0.0
        queued = sum(w.size for w in self.queues[group] if not w.future.done())
        if queued >= self.max_batch:
            return 0.0
        return max(0.0, item.since + self.max_wait - time.monotonic())

    async def loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            found = self.oldest()
            if found is None:
                self.wake.clear()
                await self.wake.wait()
                continue
            group, first = found
            delay = self.ready(group, first)
            if delay > 0:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                continue
            batch = self.take(group)
            if not batch:
                continue
            by_adapter: dict[str, list[Waiting]] = {}
            for item in batch:
                by_adapter.setdefault(item.adapter, []).append(item)
            size = sum(item.size for item in batch)
            self.stats.batches += 1
            self.stats.texts += size
            self.stats.adapters += len(by_adapter)
            self.stats.sizes.append(size)
            queries = {adapter: [w.query for w in items] for adapter, items in by_adapter.items()}
            try:
                answers = await loop.run_in_executor(self.executor, self.run, queries)
            except Exception as err:  # the batch function failed as a whole: every query in it gets the error
                answers = {adapter: [err] * len(items) for adapter, items in by_adapter.items()}
            for adapter, items in by_adapter.items():
                given = list(answers.get(adapter, ()))
                missing = RuntimeError(f"The batch function gave {len(given)} answers for {len(items)} queries.")
                for index, item in enumerate(items):
                    answer = given[index] if index < len(given) else missing
                    if item.future.done():
                        continue
                    if isinstance(answer, BaseException):
                        item.future.set_exception(answer)
                    else:
                        item.future.set_result(answer)


def same_adapter(adapter: str) -> str:
    """The default group of an adapter: itself (batches per adapter)."""
    return adapter
