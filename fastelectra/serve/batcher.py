"""Dynamic batching across requests: many clients' texts share one model run.

Requests arrive already tokenized (so token counts are exact) and wait in a FIFO queue. One
collector task on the event loop takes a *unit* of whole requests from the head of the queue,
as many as fit one batch (`max_batch_size` texts, `max_batch_tokens` tokens); a request larger
than that forms a unit alone. While the model runs, new requests queue up, so under load each
unit is full without waiting. Only when the queue holds less than a batch does the collector
wait for company, at most `max_wait_s` counted from the oldest request's arrival, and only
while requests have recently been arriving faster than one per `max_wait_s` (a moving average
of the gaps): a lone client's request, with nobody to wait for, runs at once instead of
paying the wait on every call.

The runner decides how a unit's texts are cut into model runs (`batching.plan_runs`: by length,
so that short texts are not padded to a long one's length). Each run is one trip to a single
model thread: a run already uses every core onnxruntime is given and releases the GIL, so the
event loop serves HTTP meanwhile, and between runs it scatters the vectors and answers every
request whose texts have all run.

Isolation: requests are validated before they are queued, so a unit holds only well-formed
work; if a model run raises anyway, every unanswered request of the unit is re-run alone, so
only one that fails alone gets the error.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fastelectra.errors import FastElectraError, InputError
from fastelectra.runtime.tokenizer import Encoding

log = logging.getLogger("fastelectra.serve")

# A runner embeds a sequence of encodings and yields, per model run, the positions of the rows
# it ran, their vectors [rows, dim], and the padded tokens (rows x longest row) it cost.
RunResult = tuple[np.ndarray, np.ndarray, int]
ModelRunner = Callable[[Sequence[Encoding]], Iterable[RunResult]]

# Weight of the newest unit in the moving average of throughput behind Retry-After.
RATE_SMOOTHING = 0.2
# Weight of the newest gap in the moving average of arrival gaps.
ARRIVAL_SMOOTHING = 0.2


class QueueFull(FastElectraError):
    """The queue holds `max_queue` requests; try again in `retry_after_s` seconds."""

    def __init__(self, max_queue: int, retry_after_s: int) -> None:
        super().__init__(f"the queue is full ({max_queue} requests waiting); retry later")
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s


class BatcherClosed(FastElectraError):
    """The server is shutting down and takes no new work."""


class BatchObserver(Protocol):
    """Where the batcher reports what it does (`metrics.ServerMetrics` implements it)."""

    def observe_queue_wait(self, seconds: float) -> None: ...

    def observe_run(self, rows: int, requests: int, padded_tokens: int, seconds: float) -> None: ...

    def observe_failure(self) -> None: ...

    def set_queue(self, waiting: int, running: int) -> None: ...


@dataclass(eq=False)
class _Request:
    encodings: list[Encoding]
    future: asyncio.Future[np.ndarray]
    queued_at: float
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sum(len(e) for e in self.encodings)


class Batcher:
    """Queue tokenized requests and run them in shared batches; see the module docstring.

    Use from one event loop: `start()`, then `await embed(encodings)` from any number of
    tasks, and `await close()` at shutdown.
    """

    def __init__(
        self,
        runner: ModelRunner,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue: int,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1 or max_queue < 1 or max_wait_s < 0:
            raise InputError("batch limits and max_queue must be >= 1, max_wait_s >= 0")
        self._runner = runner
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._observer = observer
        self._waiting: deque[_Request] = deque()
        self._running_requests = 0
        self._running_rows = 0
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fastelectra-model")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._rows_per_second: float | None = None
        # Moving average of the gap between arrivals: is company likely within max_wait_s?
        self._last_arrival: float | None = None
        self._arrival_gap_s = math.inf

    @property
    def waiting(self) -> int:
        """Requests queued and not yet in a model run."""
        return len(self._waiting)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect())

    async def embed(self, encodings: list[Encoding]) -> np.ndarray:
        """The vectors of one request's encodings, [len(encodings), dim], in order.

        Raises:
            QueueFull: `max_queue` requests are already waiting (answer 429).
            BatcherClosed: shutdown has begun (answer 503).
            Exception: whatever the runner raised for this request run alone.
        """
        if not encodings:
            raise InputError("a request needs at least one text")
        if self._closing or self._task is None:
            raise BatcherClosed("the server is shutting down" if self._closing else "not started")
        if len(self._waiting) >= self.max_queue:
            raise QueueFull(self.max_queue, self.retry_after_s())
        loop = asyncio.get_running_loop()
        request = _Request(list(encodings), loop.create_future(), time.perf_counter())
        self._note_arrival(request.queued_at)
        self._waiting.append(request)
        self._report_queue()
        self._arrived.set()
        return await request.future

    def _note_arrival(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            previous = self._arrival_gap_s if math.isfinite(self._arrival_gap_s) else gap
            self._arrival_gap_s = ARRIVAL_SMOOTHING * gap + (1 - ARRIVAL_SMOOTHING) * previous
        self._last_arrival = now

    def retry_after_s(self) -> int:
        """Whole seconds until the queue has drained, at the recent rate (at least 1)."""
        if not self._rows_per_second:
            return 1
        rows = sum(len(r.encodings) for r in self._waiting) + self._running_rows
        return max(1, math.ceil(rows / self._rows_per_second))

    async def close(self, timeout_s: float | None = None) -> None:
        """Refuse new work, finish what is queued (up to `timeout_s`), stop the model thread."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except asyncio.TimeoutError:
                log.error(
                    "shutdown: %d queued requests not finished in %ss", self.waiting, timeout_s
                )
                self._task.cancel()
        while self._waiting:
            request = self._waiting.popleft()
            if not request.future.done():
                request.future.set_exception(BatcherClosed("the server shut down first"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the collector ---------------------------------------------------------------------

    async def _collect(self) -> None:
        while True:
            if not self._waiting:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._wait_for_company()
            unit = self._take_unit()
            if unit:
                await self._run_unit(unit)

    async def _wait_for_company(self) -> None:
        """Until the queue fills a batch, or the oldest request has waited `max_wait_s`."""
        if self._arrival_gap_s > self.max_wait_s:
            return  # requests arrive further apart than the wait: company is unlikely
        deadline = self._waiting[0].queued_at + self.max_wait_s
        while not self._closing and self._batch_has_room():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _batch_has_room(self) -> bool:
        """Whether the waiting requests leave room in a batch (so waiting for more may help)."""
        rows = tokens = 0
        for request in self._waiting:
            rows += len(request.encodings)
            tokens += request.tokens
            if rows >= self.max_batch_size or tokens >= self.max_batch_tokens:
                return False
        return True

    def _take_unit(self) -> list[_Request]:
        """Whole requests from the head of the queue, as many as fit one batch (at least one)."""
        unit: list[_Request] = []
        rows = tokens = 0
        while self._waiting:
            request = self._waiting[0]
            if request.future.done():  # its client went away: do not spend the model on it
                self._waiting.popleft()
                continue
            new_rows, new_tokens = rows + len(request.encodings), tokens + request.tokens
            if unit and (new_rows > self.max_batch_size or new_tokens > self.max_batch_tokens):
                break
            unit.append(self._waiting.popleft())
            rows, tokens = new_rows, new_tokens
        now = time.perf_counter()
        for request in unit:
            if self._observer:
                self._observer.observe_queue_wait(now - request.queued_at)
        return unit

    async def _run_unit(self, unit: list[_Request]) -> None:
        self._running_requests = len(unit)
        self._running_rows = sum(len(r.encodings) for r in unit)
        self._report_queue()
        started = time.perf_counter()
        try:
            await self._embed_unit(unit)
        except Exception as error:
            log.exception("a model run of %d requests failed; re-running them alone", len(unit))
            if self._observer:
                self._observer.observe_failure()
            pending = [r for r in unit if not r.future.done()]  # the others were answered
            if len(unit) == 1:
                _fail(unit[0].future, error)
            else:
                await self._rerun_alone(pending)
        else:
            self._update_rate(self._running_rows, time.perf_counter() - started)
        finally:
            self._running_requests = self._running_rows = 0
            self._report_queue()

    async def _rerun_alone(self, requests: list[_Request]) -> None:
        for request in requests:
            try:
                await self._embed_unit([request])
            except Exception as own_error:
                log.exception("a request failed when run alone")
                _fail(request.future, own_error)

    async def _embed_unit(self, unit: list[_Request]) -> None:
        """The unit's texts through the runner, one model run per trip to the model thread.

        Each request is answered as soon as its last text has run, not when the whole unit has;
        between runs the model thread returns, so the event loop's bookkeeping never holds the
        GIL against a run.
        """
        loop = asyncio.get_running_loop()
        encodings = [e for request in unit for e in request.encodings]
        sizes = np.array([len(request.encodings) for request in unit])
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        owners = np.repeat(np.arange(len(unit)), sizes)
        missing = sizes.copy()
        vectors: np.ndarray | None = None
        filled = 0
        # Made in the model thread too: a runner may do work before its first run.
        runs = await loop.run_in_executor(self._executor, lambda: iter(self._runner(encodings)))
        while (step := await loop.run_in_executor(self._executor, _next_run, runs)) is not None:
            (indices, batch_vectors, padded_tokens), seconds = step
            if vectors is None:
                vectors = np.empty((len(encodings), batch_vectors.shape[1]), np.float32)
            vectors[indices] = batch_vectors
            filled += len(indices)
            ran = owners[indices]
            np.subtract.at(missing, ran, 1)
            requests = np.unique(ran)
            if self._observer:
                self._observer.observe_run(len(indices), len(requests), padded_tokens, seconds)
            for r in requests:
                if missing[r] == 0:
                    _resolve(unit[r].future, vectors[offsets[r] : offsets[r + 1]])
        if filled != len(encodings):
            raise RuntimeError(f"the model runner returned {filled} of {len(encodings)} vectors")

    def _update_rate(self, rows: int, seconds: float) -> None:
        rate = rows / max(seconds, 1e-9)
        previous = self._rows_per_second
        self._rows_per_second = (
            rate if previous is None else RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * previous
        )

    def _report_queue(self) -> None:
        if self._observer:
            self._observer.set_queue(len(self._waiting), self._running_requests)


def _next_run(runs: Iterator[RunResult]) -> tuple[RunResult, float] | None:
    """In the model thread: the next run and the seconds it took, or None after the last."""
    started = time.perf_counter()
    try:
        result = next(runs)
    except StopIteration:
        return None
    return result, time.perf_counter() - started


def _resolve(future: asyncio.Future[np.ndarray], vectors: np.ndarray) -> None:
    if not future.done():  # a client that went away cancelled it
        future.set_result(vectors)


def _fail(future: asyncio.Future[np.ndarray], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
