"""Prometheus-style counters of a server, rendered in the text exposition format at `/metrics`.

No client library: a few counters and two histograms, updated on the event loop (and under a lock, so a batch
thread may add too).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative bucket counts, sum and count of observed values.

    Args:
        buckets: the upper bounds, increasing (a +Inf bucket is added).
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        self.counts[index] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> Iterable[str]:
        sep = "," if labels else ""
        total = 0
        for bound, n in zip((*self.buckets, "+Inf"), self.counts):
            total += n
            yield f'{name}_bucket{{{labels}{sep}le="{bound}"}} {total}'
        yield f"{name}_sum{{{labels}}} {self.sum:.6f}" if labels else f"{name}_sum {self.sum:.6f}"
        yield f"{name}_count{{{labels}}} {self.count}" if labels else f"{name}_count {self.count}"


def label_text(**labels: str) -> str:
    return ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())


def escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ServerMetrics:
    """Requests by adapter and status, texts, rejections, batch sizes, request latency and the queue depth."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.texts: dict[str, int] = defaultdict(int)
        self.rejects: dict[str, int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.queued = 0

    def request(self, adapter: str, status: int, seconds: float, texts: int = 0, rejected: int = 0) -> None:
        with self.lock:
            self.requests[(adapter, status)] += 1
            self.texts[adapter] += texts
            self.rejects[adapter] += rejected
            self.latency.setdefault(adapter, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batches(self, sizes: Iterable[int]) -> None:
        with self.lock:
            for size in sizes:
                self.batch_sizes.observe(size)

    def render(self) -> str:
        with self.lock:
            out = ["# HELP peft_dect_requests_total Classification requests answered, by adapter and status."]
            out.append("# TYPE peft_dect_requests_total counter")
            for (adapter, status), n in sorted(self.requests.items()):
                out.append(f"peft_dect_requests_total{{{label_text(adapter=adapter, status=str(status))}}} {n}")
            out.append("# HELP peft_dect_texts_total Texts classified, by adapter.")
            out.append("# TYPE peft_dect_texts_total counter")
            out += [f"peft_dect_texts_total{{{label_text(adapter=a)}}} {n}" for a, n in sorted(self.texts.items())]
            out.append("# HELP peft_dect_rejects_total Texts answered with the reject label, by adapter.")
            out.append("# TYPE peft_dect_rejects_total counter")
            out += [f"peft_dect_rejects_total{{{label_text(adapter=a)}}} {n}" for a, n in sorted(self.rejects.items())]
            out.append("# HELP peft_dect_request_seconds Latency of classification requests, by adapter.")
            out.append("# TYPE peft_dect_request_seconds histogram")
            for adapter, hist in sorted(self.latency.items()):
                out += hist.lines("peft_dect_request_seconds", label_text(adapter=adapter))
            out.append("# HELP peft_dect_batch_size Texts per backbone batch.")
            out.append("# TYPE peft_dect_batch_size histogram")
            out += self.batch_sizes.lines("peft_dect_batch_size", "")
            out += ["# HELP peft_dect_queued_texts Texts waiting for a batch.", "# TYPE peft_dect_queued_texts gauge"]
            out.append(f"peft_dect_queued_texts {self.queued}")
            return "\n".join(out) + "\n"
