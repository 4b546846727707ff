"""grpc.aio servicers: decode, hand to the backend, encode. No model logic here."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

import grpc

from . import codec
from .backend import Backend, RequestError
from .batcher import Batcher
from .proto import load

_, services = load()


def _status(code: str) -> grpc.StatusCode:
    return grpc.StatusCode[code]


class DenoiserService(services.DenoiserServicer):
    def __init__(self, backend: Backend, batcher: Batcher) -> None:
        self.backend = backend
        self.batcher = batcher
        self.description = backend.describe()
        # Calls beyond max_concurrency wait here (within their deadline) instead of growing the queue.
        self._slots = asyncio.Semaphore(self.description.max_concurrency)

    async def Describe(self, request, context):
        return codec.encode_description(self.description)

    async def Evaluate(self, request, context):
        started = time.perf_counter()
        decoded = codec.decode_evaluate_request(request)
        try:
            self.backend.check_request(decoded)
        except RequestError as error:
            await context.abort(_status(error.code), error.message)
        async with self._slots:
            outcome = await self.batcher.submit(decoded)
        if isinstance(outcome, RequestError):
            await context.abort(_status(outcome.code), outcome.message)
        return codec.encode_evaluate_response(
            outcome, server_seconds=time.perf_counter() - started, server_id=self.description.server_id
        )


class VerifierService(services.VerifierServicer):
    def __init__(self, backend: Backend, executor: Executor) -> None:
        self.backend = backend
        self.executor = executor
        self.description = backend.describe()

    async def Describe(self, request, context):
        return codec.encode_verifier_description(self.description)

    async def Score(self, request, context):
        decoded = codec.decode_score_request(request)
        try:
            response = await asyncio.get_running_loop().run_in_executor(self.executor, self.backend.score, decoded)
        except RequestError as error:
            await context.abort(_status(error.code), error.message)
        return codec.encode_score_response(response)

    async def Population(self, request, context):
        decoded = codec.decode_population_request(request)
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, self.backend.population, decoded)
        except RequestError as error:
            await context.abort(_status(error.code), error.message)
        return codec.encode_population_response(result)
