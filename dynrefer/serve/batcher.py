"""Batching across requests: concurrent requests with the same options go through one engine call.

A small asyncio batcher in front of the engine (see docs/serving.md for how it compares with LitServe). Each
request waits in a queue; the worker takes the oldest, then adds the queued requests with the same options, and
waits for more only while other requests are still being read and decoded (:meth:`Batcher.expect`), at most
``max_wait_ms`` after the first: a lone request runs at once. Batches hold up to ``max_batch_regions`` regions
and run on one worker thread (the model runs one batch at a time; requests that arrive meanwhile form the next).
A batch that fails is retried request by request, so that one request's failure is its own.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class _Job:
    key: tuple
    item: object
    regions: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class Batcher:
    """``await batcher.submit(key, item, regions)`` returns ``run_batch(key, items)``'s result for ``item``.

    Args:
        run_batch: ``(key, items) -> results`` (one per item, in order), called on a worker thread.
        max_batch_regions: regions per batch (a request with more regions runs alone).
        max_wait_ms: how long the first request of a batch waits for others.
    """

    def __init__(self, run_batch, *, max_batch_regions: int = 64, max_wait_ms: float = 10.0):
        self.run_batch = run_batch
        self.max_batch_regions = max(1, int(max_batch_regions))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self._loop = self._queue = self._worker = self._pool = None
        self._held: deque[_Job] = deque()  # taken from the queue, options of another batch
        self._expected = 0  # requests being read and decoded, announced by expect()
        self.batches: deque[int] = deque(maxlen=1024)  # requests per recent batch (bounded: a server runs for days)

    def _start(self) -> None:
        """Queue, worker and engine thread for the running event loop (again after :meth:`close`, or when the
        app is served from another loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._worker is not None and not self._worker.done():
            return
        self._loop, self._queue, self._held = loop, asyncio.Queue(), deque()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynrefer-engine")
        self._worker = loop.create_task(self._work())

    async def prepare(self, fn, *args):
        """``fn(*args)`` (reading and decoding a request) on the engine's own thread: torch and its OpenMP
        threads then run on one thread at a time; with the engine on one thread and decoding on others, their
        thread teams competed for the cores (the engine ran slower beside them)."""
        self._start()
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def expect(self) -> None:
        """Announce a request that is being read and decoded: a batch being gathered waits for it (up to
        ``max_wait_ms``). Follow with :meth:`submit` (``expected=True``) or :meth:`unexpect`."""
        self._expected += 1

    def unexpect(self) -> None:
        """The announced request will not come (it was refused)."""
        self._expected = max(0, self._expected - 1)

    async def submit(self, key: tuple, item, regions: int, *, expected: bool = False):
        if expected:
            self.unexpect()
        self._start()
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(key, item, max(1, int(regions)), future))
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._held.popleft() if self._held else await self._queue.get()
            jobs, count, kept = [first], first.regions, deque()
            for job in self._held:  # requests set aside earlier join when their options match
                if job.key == first.key and count + job.regions <= self.max_batch_regions:
                    jobs.append(job)
                    count += job.regions
                else:
                    kept.append(job)
            self._held = kept
            deadline = first.arrived + self.max_wait
            while count < self.max_batch_regions:
                remaining = deadline - time.perf_counter()
                waiting = self._queue.empty()
                if waiting and (self._expected == 0 or remaining <= 0):
                    break  # nothing queued, and nothing on its way (or waited long enough)
                try:  # what is queued is taken at once (it waited for the engine)
                    job = await asyncio.wait_for(self._queue.get(), remaining) if waiting else self._queue.get_nowait()
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if job.key == first.key and count + job.regions <= self.max_batch_regions:
                    jobs.append(job)
                    count += job.regions
                else:
                    self._held.append(job)
            jobs = [j for j in jobs if not j.future.done()]
            if jobs:
                self.batches.append(len(jobs))
                await loop.run_in_executor(self._pool, self._run, jobs)

    def _run(self, jobs: list[_Job]) -> None:
        try:
            results = self.run_batch(jobs[0].key, [j.item for j in jobs])
            outcomes = [(True, r) for r in results]
        except Exception:  # noqa: BLE001 - isolate the failing request: run each alone, each gets its own outcome
            outcomes = []
            for job in jobs:
                try:
                    outcomes.append((True, self.run_batch(job.key, [job.item])[0]))
                except Exception as exc:  # noqa: BLE001 - handed to that request's caller
                    outcomes.append((False, exc))
        for job, (ok, value) in zip(jobs, outcomes):
            job.future.get_loop().call_soon_threadsafe(_settle, job.future, ok, value)

    def close(self) -> None:
        """Stop the worker and the engine thread (a later request starts them again)."""
        if self._worker is not None:
            self._worker.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._loop = self._queue = self._worker = self._pool = None


def _settle(future: asyncio.Future, ok: bool, value) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
