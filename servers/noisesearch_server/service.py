"""grpc.aio servicers: decode, hand to the backend, encode. No model logic here.

Whatever goes wrong reaches the client as a status with its cause: a RequestError with its own code, any
other exception as INTERNAL (never gRPC's UNKNOWN, which would hide the cause). Requests are parsed here too,
not by gRPC: bytes that are no message of the method's type are INVALID_ARGUMENT naming the field that is
corrupt (gRPC's own parsing answers UNKNOWN, "Unexpected DecodeError").
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

import grpc
from google.protobuf.message import DecodeError

from . import codec
from .backend import (
    MAX_POPULATION_SAMPLES,
    MAX_SCORE_SAMPLES,
    Backend,
    EvaluateRequest,
    RequestError,
    describe_failure,
    too_many_candidates,
)
from .batcher import Batcher
from .faults import FaultPlan
from .lineage import Cancellation
from .metrics import ServerMetrics
from .proto import load
from .validation import MAX_REQUEST_LINEAGE_ITEMS
from .wire import describe_decode_failure, first_field_over_budget

messages, services = load()


class Undecodable:
    """What the request deserializer gives for bytes the parser refused: the servicer answers INVALID_ARGUMENT."""

    def __init__(self, message: str) -> None:
        self.message = message


def field_budget(request_type: str, max_batch: int) -> int:
    """How many fields (first_field_over_budget counts them) a request of this type may hold: what the largest
    valid one holds, and room for a few verifier names and unknown fields."""
    if request_type == "EvaluateRequest":
        # Per candidate: id, lineage, condition, score_xpred, base; lineage: noise; noise: seed.
        return MAX_REQUEST_LINEAGE_ITEMS + 8 * max_batch + 1_000
    if request_type == "ScoreRequest":
        return MAX_SCORE_SAMPLES + 1_000
    if request_type == "PopulationRequest":
        return MAX_POPULATION_SAMPLES + 1_000
    return 1_000


def _lenient_parser(message_class, budget: int) -> Callable[[bytes], object]:
    descriptor = message_class.DESCRIPTOR

    def parse(data: bytes):
        # Before parsing, which makes an object of every field: an empty entry (2 bytes) becomes ~80 bytes.
        over = first_field_over_budget(descriptor, data, budget)
        if over is not None:
            return Undecodable(
                f"{over}: more than {budget} fields in all, the most a request of this RPC "
                f"({descriptor.name}) may hold (counted before parsing); split the request"
            )
        try:
            return message_class.FromString(data)
        except DecodeError as error:
            return Undecodable(describe_decode_failure(message_class.DESCRIPTOR, data, error))

    return parse


def _parsed(request):
    if isinstance(request, Undecodable):
        raise RequestError("INVALID_ARGUMENT", request.message)
    return request


def add_services(server, *servicers) -> None:
    """Registers each servicer (named after its service) for every method the proto declares, parsing requests
    leniently; a method the proto declares and the servicer lacks fails here, at start-up."""
    for servicer in servicers:
        service = messages.DESCRIPTOR.services_by_name[servicer.SERVICE]
        max_batch = servicer.description.max_batch
        handlers = {
            method.name: grpc.unary_unary_rpc_method_handler(
                getattr(servicer, method.name),
                request_deserializer=_lenient_parser(
                    getattr(messages, method.input_type.name), field_budget(method.input_type.name, max_batch)
                ),
                response_serializer=getattr(messages, method.output_type.name).SerializeToString,
            )
            for method in service.methods
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


async def _answer(context, metrics: ServerMetrics, method: str, handle: Callable[[], Awaitable]):
    code = "OK"
    try:
        try:
            return await handle()
        except RequestError as error:
            code, message = error.code, error.message
        except Exception as unexpected:
            code, message = "INTERNAL", f"the server failed: {describe_failure(unexpected)}"
        except asyncio.CancelledError:
            # grpc cancels the handler when the client cancels or its deadline passes; either way no answer goes out.
            remaining = context.time_remaining()
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            raise
        # Outside the except blocks: abort raises, and must not be caught above.
        await context.abort(grpc.StatusCode[code], message)
    finally:
        metrics.requests.labels(method, code).inc()


def _cancellation(context) -> Cancellation:
    remaining = context.time_remaining()
    return Cancellation(None if remaining is None else time.monotonic() + remaining)


class DenoiserService(services.DenoiserServicer):
    SERVICE = "Denoiser"

    def __init__(self, backend: Backend, batcher: Batcher, metrics: ServerMetrics, faults: FaultPlan | None = None) -> None:
        self.backend = backend
        self.metrics = metrics
        self.batcher = batcher
        self.faults = faults
        self.description = backend.describe()
        self.requests_received = 0
        # Calls beyond max_concurrency wait here (within their deadline) instead of growing the queue.
        self._slots = asyncio.Semaphore(self.description.max_concurrency)

    async def Describe(self, request, context):
        async def describe():
            _parsed(request)
            return codec.encode_description(self.description)

        return await _answer(context, self.metrics, "Describe", describe)

    async def Evaluate(self, request, context):
        return await _answer(context, self.metrics, "Evaluate", lambda: self._evaluate(request, context))

    async def _evaluate(self, request, context):
        started = time.perf_counter()
        self.requests_received += 1
        if self.faults is not None and self.requests_received == self.faults.exit_after_requests:
            os._exit(1)
        request = _parsed(request)
        # Counted before decoding: decoding a million empty candidates would cost seconds and a gigabyte.
        if len(request.candidates) > self.description.max_batch:
            raise too_many_candidates(len(request.candidates), self.description.max_batch)
        items = sum(len(c.lineage.ops) + len(c.lineage.noise.perturbations) for c in request.candidates)
        if items > MAX_REQUEST_LINEAGE_ITEMS:
            raise RequestError(
                "INVALID_ARGUMENT",
                f"candidates: {items} ops and perturbations in all, more than the {MAX_REQUEST_LINEAGE_ITEMS} a "
                f"request may carry; continue from bases (a CandidateResult's state_key) or split the request",
            )
        decoded = codec.decode_evaluate_request(request, _cancellation(context))
        self.backend.check_request(decoded)
        if self.faults is not None:
            await self._inject_request_faults(decoded)
        async with self._slots:
            outcome = await self.batcher.submit(decoded)
        if isinstance(outcome, RequestError):
            raise outcome
        for result in outcome.results:
            self.metrics.candidates.labels("OK" if result.error is None else result.error.code).inc()
        self.metrics.verified(outcome.verifier_timings)
        return codec.encode_evaluate_response(
            outcome, server_seconds=time.perf_counter() - started, server_id=self.description.server_id
        )

    async def _inject_request_faults(self, request: EvaluateRequest) -> None:
        assert self.faults is not None
        faults = self.faults.call_faults(self.backend.final_state_keys(request))
        if faults.latency_seconds > 0:
            await asyncio.sleep(faults.latency_seconds)
        if faults.hang:
            # Until the client's deadline or cancellation, which cancels this handler.
            await asyncio.Event().wait()
        if faults.status is not None:
            raise RequestError(*faults.status)


class VerifierService(services.VerifierServicer):
    SERVICE = "Verifier"

    def __init__(self, backend: Backend, executor: Executor, metrics: ServerMetrics) -> None:
        self.backend = backend
        self.executor = executor
        self.metrics = metrics
        self.description = backend.describe()

    async def Describe(self, request, context):
        async def describe():
            _parsed(request)
            return codec.encode_verifier_description(self.description)

        return await _answer(context, self.metrics, "Describe", describe)

    async def Score(self, request, context):
        async def score():
            decoded = codec.decode_score_request(_parsed(request))
            response = await asyncio.get_running_loop().run_in_executor(self.executor, self.backend.score, decoded)
            self.metrics.verified(response.verifier_timings)
            return codec.encode_score_response(response)

        return await _answer(context, self.metrics, "Score", score)

    async def Population(self, request, context):
        async def population():
            decoded = codec.decode_population_request(_parsed(request))
            result = await asyncio.get_running_loop().run_in_executor(self.executor, self.backend.population, decoded)
            return codec.encode_population_response(result)

        return await _answer(context, self.metrics, "Population", population)
