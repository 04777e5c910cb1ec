"""Dynamic batching across requests: many clients' texts share one model run, and no request
waits behind another's remaining runs.

Requests arrive already tokenized (so token counts are exact) and are pending until their last
text has run. One collector task on the event loop repeats a *step*: it picks the rows of one
bounded run (at most `max_batch_size` rows and `max_batch_tokens` padded tokens, rows x
longest row) from the pending requests, least-served first (the fewest tokens already run,
then the oldest), runs them, and answers each request whose texts have all run. A large
request is thereby cut into bounded runs, and a request that arrives meanwhile has been served
nothing, so it joins the very next step: it waits for at most the one run in progress, never
for the large request's remaining runs (least-attained-service scheduling). Two large
requests take turns. Each request's rows run longest first, so the rows a step takes from it
have similar lengths.

Only when no request is part-way and the pending ones leave room in a batch does the collector
wait for company, at most `max_wait_s` counted from the oldest request's arrival, and only
while requests have recently been arriving faster than one per `max_wait_s` (a moving average
of the gaps): a lone client's request, with nobody to wait for, runs at once instead of
paying the wait on every call.

The runner decides how a step's rows are cut into model runs (`batching.plan_runs`: by length,
so that short texts are not padded to a long one's length); together they cost no more than
the step's bound. Each run is one trip to a single model thread: a run already uses every core
onnxruntime is given and releases the GIL, so the event loop serves HTTP meanwhile, and
between runs it scatters the vectors and answers every request whose texts have all run.

Isolation: requests are validated before they are queued, so a step holds only well-formed
work; if a model run raises anyway, each request of the step is re-run alone, so only one that
fails alone gets the error.

Shutdown (`close`) refuses new work, lets pending requests finish within its timeout, then
answers the rest with `BatcherClosed`; a run in progress is never cut (onnxruntime cannot be
interrupted), so the model thread is free at most one bounded run later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
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
    lengths: np.ndarray = field(init=False)
    # Its rows in the order they run (longest first), and how many of them steps have taken.
    order: np.ndarray = field(init=False)
    taken: int = 0
    # Rows taken whose vectors are not in yet; tokens of the rows taken (the service received).
    unfinished: int = 0
    served_tokens: int = 0
    vectors: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.lengths = np.array([len(e) for e in self.encodings], dtype=np.int64)
        self.order = np.argsort(-self.lengths, kind="stable")

    @property
    def rows_left(self) -> int:
        """Rows no step has taken yet."""
        return len(self.order) - self.taken


# One step's work: each request with the rows (its own indices) the step runs of it.
Step = list[tuple[_Request, np.ndarray]]


class Batcher:
    """Queue tokenized requests and run them in shared, bounded steps; see the module docstring.

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
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1 or max_queue < 1 or max_wait_s < 0:
            raise InputError("batch limits and max_queue must be >= 1, max_wait_s >= 0")
        self._runner = runner
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._observer = observer
        # Arrival times and the wait for company read this clock (tests pass a manual one).
        self._clock = clock
        self._pending: list[_Request] = []  # in arrival order
        self._running_requests = 0
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fastelectra-model")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed: asyncio.Task[None] | None = None
        self._rows_per_second: float | None = None
        # Moving average of the gap between arrivals: is company likely within max_wait_s?
        self._last_arrival: float | None = None
        self._arrival_gap_s = math.inf

    @property
    def waiting(self) -> int:
        """Requests none of whose texts has run yet."""
        return sum(1 for r in self._pending if r.taken == 0)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect())

    async def embed(self, encodings: list[Encoding]) -> np.ndarray:
        """The vectors of one request's encodings, [len(encodings), dim], in order.

        Raises:
            QueueFull: `max_queue` requests are already waiting to start (answer 429).
            BatcherClosed: shutdown has begun, or ended before this request was done (503).
            Exception: whatever the runner raised for this request run alone.
        """
        if not encodings:
            raise InputError("a request needs at least one text")
        if self._closing or self._task is None:
            raise BatcherClosed("the server is shutting down" if self._closing else "not started")
        if self.waiting >= self.max_queue:
            raise QueueFull(self.max_queue, self.retry_after_s())
        loop = asyncio.get_running_loop()
        request = _Request(list(encodings), loop.create_future(), self._clock())
        self._note_arrival(request.queued_at)
        self._pending.append(request)
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
        """Whole seconds until the pending rows have run, at the recent rate (at least 1)."""
        if not self._rows_per_second:
            return 1
        rows = sum(r.rows_left + r.unfinished for r in self._pending)
        return max(1, math.ceil(rows / self._rows_per_second))

    async def close(self, timeout_s: float | None = None) -> None:
        """Refuse new work, finish what is pending (up to `timeout_s`), answer the rest with
        `BatcherClosed`, stop the model thread. Safe to call more than once."""
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_task(self._close(timeout_s))
        await asyncio.shield(self._closed)

    async def _close(self, timeout_s: float | None) -> None:
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except asyncio.TimeoutError:
                log.error(
                    "shutdown: %d pending requests not finished in %ss; answering them 503",
                    len(self._pending),
                    timeout_s,
                )
                self._task.cancel()
        for request in self._pending:
            _fail(request.future, BatcherClosed("the server shut down before it was done"))
        self._pending.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the collector ---------------------------------------------------------------------

    async def _collect(self) -> None:
        while True:
            self._drop_abandoned()
            if not self._pending:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._wait_for_company()
            step = self._take_step()
            if step:
                await self._run_step(step)

    def _drop_abandoned(self) -> None:
        """Forget requests whose client went away: do not spend the model on them."""
        if any(r.future.done() for r in self._pending):
            self._pending = [r for r in self._pending if not r.future.done()]
            self._report_queue()

    async def _wait_for_company(self) -> None:
        """Until the queue fills a batch, or the oldest request has waited `max_wait_s`."""
        if self._arrival_gap_s > self.max_wait_s:
            return  # requests arrive further apart than the wait: company is unlikely
        if any(r.taken for r in self._pending):
            return  # a request is part-way: its next rows are the company
        deadline = self._pending[0].queued_at + self.max_wait_s
        while not self._closing and self._batch_has_room():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _batch_has_room(self) -> bool:
        """Whether the pending rows leave room in a run (so waiting for more may help)."""
        rows = longest = 0
        for request in self._pending:
            rows += request.rows_left
            longest = max(longest, int(request.lengths.max()))
            if rows >= self.max_batch_size or rows * longest >= self.max_batch_tokens:
                return False
        return True

    def _take_step(self) -> Step:
        """The rows of one bounded run, least-served requests first (see the module docstring).

        A step holds at most `max_batch_size` rows and, as one run, `max_batch_tokens` padded
        tokens; a single row longer than that runs alone.
        """
        step: Step = []
        rows = longest = 0
        candidates = [r for r in self._pending if r.rows_left]
        candidates.sort(key=lambda r: r.served_tokens)  # stable: the oldest first among equals
        for request in candidates:
            first = end = request.taken
            while end < len(request.order) and rows < self.max_batch_size:
                length = int(request.lengths[request.order[end]])
                wider = max(longest, length)
                if rows and (rows + 1) * wider > self.max_batch_tokens:
                    break
                rows, longest, end = rows + 1, wider, end + 1
            if end > first:
                taken = request.order[first:end]
                request.taken = end
                request.unfinished += len(taken)
                request.served_tokens += int(request.lengths[taken].sum())
                step.append((request, taken))
            if rows >= self.max_batch_size:
                break
        now = self._clock()
        for request, taken in step:
            if self._observer and request.taken == len(taken):  # its first step
                self._observer.observe_queue_wait(now - request.queued_at)
        return step

    async def _run_step(self, step: Step) -> None:
        self._running_requests = len(step)
        self._report_queue()
        started = time.perf_counter()
        try:
            await self._embed_step(step)
        except Exception as error:
            log.exception("a model run of %d requests failed; re-running them alone", len(step))
            if self._observer:
                self._observer.observe_failure()
            if len(step) == 1:
                self._give_up(step[0][0], error)
            else:
                await self._rerun_alone(step)
        else:
            rows = sum(len(taken) for _, taken in step)
            self._update_rate(rows, time.perf_counter() - started)
        finally:
            self._running_requests = 0
            self._report_queue()

    async def _rerun_alone(self, step: Step) -> None:
        for request, taken in step:
            if request.future.done():
                continue
            request.unfinished = len(taken)  # rows of it that ran before the failure run again
            try:
                await self._embed_step([(request, taken)])
            except Exception as own_error:
                log.exception("a request failed when run alone")
                self._give_up(request, own_error)

    def _give_up(self, request: _Request, error: BaseException) -> None:
        _fail(request.future, error)
        if request in self._pending:
            self._pending.remove(request)

    async def _embed_step(self, step: Step) -> None:
        """The step's rows through the runner, one model run per trip to the model thread.

        Each request is answered as soon as its last text has run, not when the whole step
        has; between runs the model thread returns, so the event loop's bookkeeping never
        holds the GIL against a run.
        """
        loop = asyncio.get_running_loop()
        encodings = [request.encodings[i] for request, taken in step for i in taken]
        owners = np.repeat(np.arange(len(step)), [len(taken) for _, taken in step])
        rows = np.concatenate([taken for _, taken in step])
        filled = 0
        # Made in the model thread too: a runner may do work before its first run.
        runs = await loop.run_in_executor(self._executor, lambda: iter(self._runner(encodings)))
        while (result := await loop.run_in_executor(self._executor, _next_run, runs)) is not None:
            (indices, batch_vectors, padded_tokens), seconds = result
            filled += len(indices)
            ran = owners[indices]
            for k in np.unique(ran):
                request = step[k][0]
                if request.vectors is None:
                    dim = batch_vectors.shape[1]
                    request.vectors = np.empty((len(request.encodings), dim), np.float32)
                mine = ran == k
                request.vectors[rows[indices[mine]]] = batch_vectors[mine]
                request.unfinished -= int(mine.sum())
                if request.unfinished == 0 and request.rows_left == 0:
                    _resolve(request.future, request.vectors)
                    self._pending.remove(request)
            if self._observer:
                self._observer.observe_run(
                    len(indices), len(np.unique(ran)), padded_tokens, seconds
                )
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
            self._observer.set_queue(self.waiting, self._running_requests)


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
