"""Dynamic batching: concurrent Evaluate calls arriving within a short window share one engine run."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

from .backend import Backend, EvaluateRequest, EvaluateResponse, RequestError, describe_failure
from .metrics import ServerMetrics


@dataclass
class _Waiting:
    request: EvaluateRequest
    reply: asyncio.Future
    queued: float = field(default_factory=time.monotonic)

    def abandoned(self) -> str | None:
        """Why nobody waits for this reply any more (a gRPC status name), or None."""
        if self.reply.done():
            return "CANCELLED"
        return self.request.cancellation.reason(time.monotonic())


class Batcher:
    def __init__(
        self, backend: Backend, max_batch: int, window_seconds: float, executor: Executor, metrics: ServerMetrics
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.max_batch = max_batch
        self.window_seconds = window_seconds
        # One worker thread: the engine and its cache are not thread-safe, and the event loop must stay free.
        self.executor = executor
        self.engine_runs = 0
        self.skipped_requests = 0
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._held_over: _Waiting | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="noisesearch-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, request: EvaluateRequest) -> EvaluateResponse | RequestError:
        """The caller must have checked the request: it has 1 to max_batch candidates."""
        reply = asyncio.get_running_loop().create_future()
        await self._queue.put(_Waiting(request, reply))
        try:
            return await reply
        except asyncio.CancelledError:
            # The client cancelled or its deadline passed: the engine drops this request's work.
            request.cancellation.cancel()
            raise

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            now = time.monotonic()
            self.metrics.batch(
                sum(len(waiting.request.candidates) for waiting in batch), [now - waiting.queued for waiting in batch]
            )
            responses = await loop.run_in_executor(
                self.executor, self._evaluate_isolated, [waiting.request for waiting in batch]
            )
            for waiting, response in zip(batch, responses):
                if not waiting.reply.done():
                    waiting.reply.set_result(response)

    def _evaluate_isolated(self, requests: list[EvaluateRequest]) -> list[EvaluateResponse | RequestError]:
        """On the engine thread, which runs one batch at a time as a GPU does: its time is the engine's busy time."""
        started = time.monotonic()
        try:
            return self._evaluate_or_split(requests)
        finally:
            self.metrics.busy_seconds.inc(time.monotonic() - started)

    def _evaluate_or_split(self, requests: list[EvaluateRequest]) -> list[EvaluateResponse | RequestError]:
        """When a merged run raises, each request runs alone, so that one request's crash fails that request
        only, as INTERNAL with its cause."""
        self.engine_runs += 1
        try:
            return self.backend.evaluate(requests)
        except Exception as failure:
            if len(requests) == 1:
                return [RequestError("INTERNAL", f"evaluation failed: {describe_failure(failure)}")]
        responses: list[EvaluateResponse | RequestError] = []
        for request in requests:
            self.engine_runs += 1
            try:
                responses.extend(self.backend.evaluate([request]))
            except Exception as failure:
                responses.append(RequestError("INTERNAL", f"evaluation failed: {describe_failure(failure)}"))
        return responses

    def _accept(self, waiting: _Waiting) -> bool:
        """False for a request nobody waits for any more: it is never run."""
        reason = waiting.abandoned()
        if reason is None:
            return True
        self.skipped_requests += 1
        if not waiting.reply.done():
            waiting.reply.set_result(RequestError(reason, "the request was abandoned before it ran"))
        return False

    async def _gather(self) -> list[_Waiting]:
        first = self._held_over or await self._queue.get()
        self._held_over = None
        if not self._accept(first):
            return []
        batch, total = [first], len(first.request.candidates)
        deadline = asyncio.get_running_loop().time() + self.window_seconds
        while total < self.max_batch:
            waiting = await self._next_before(deadline)
            if waiting is None:
                break
            if not self._accept(waiting):
                continue
            size = len(waiting.request.candidates)
            if total + size > self.max_batch:
                self._held_over = waiting
                break
            batch.append(waiting)
            total += size
        return [waiting for waiting in batch if self._accept(waiting)]

    async def _next_before(self, deadline: float) -> _Waiting | None:
        if not self._queue.empty():
            return self._queue.get_nowait()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), remaining)
        except TimeoutError:
            return None
