"""A KServe v2 (inference.GRPCInferenceService) client for the engine's thread: the engine is synchronous, so each
call is a coroutine on one asyncio loop the client owns in a thread of its own, and the engine waits for it.
Tensors travel as raw contents; Triton's status codes become the contract's classified errors here, once."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ..backend import RequestError

T = TypeVar("T")

DTYPES = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "BYTES": np.object_}
DATATYPES = {np.dtype(v): k for k, v in DTYPES.items() if k != "BYTES"}

# Down, restarting, overloaded or a model unloaded: the call may succeed later on this or another server.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED,
}
# The request itself is wrong for the model: a contract bug no retry fixes.
REJECTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION}


class TritonModelError(RuntimeError):
    """The model itself failed on these rows (Triton's INTERNAL): the engine's isolation then fails only the rows
    that still fail alone, each with this message."""


def classify(error: grpc.aio.AioRpcError, what: str) -> Exception:
    message = f"{what}: {error.code().name}: {error.details()}"
    if error.code() in RETRYABLE:
        return RequestError("UNAVAILABLE", message)
    if error.code() in REJECTED:
        return RequestError("INVALID_ARGUMENT", message)
    return TritonModelError(message)


def _raw(values: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(values, dtype=np.dtype(DTYPES[datatype]).newbyteorder("<")).tobytes()
    # KServe v2 BYTES: each element as a 4-byte little-endian length, then its bytes.
    parts = []
    for value in values.reshape(-1):
        encoded = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(struct.pack("<I", len(encoded)) + encoded)
    return b"".join(parts)


def _array(raw: bytes, datatype: str, shape: Sequence[int]) -> np.ndarray:
    if datatype not in DTYPES or datatype == "BYTES":
        raise TritonModelError(f"output datatype {datatype} is not one the contract uses")
    return np.frombuffer(raw, dtype=np.dtype(DTYPES[datatype]).newbyteorder("<")).reshape(tuple(shape))


class TritonClient:
    def __init__(self, address: str, *, timeout_s: float, max_message_bytes: int) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="noisesearch-triton", daemon=True)
        self._thread.start()
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # gRPC's default reconnect backoff grows to two minutes while Triton is down, so a restarted Triton
            # would be noticed that late (and a start-up probe would see a fresh tritonserver seconds late); a
            # half-second cap costs a cheap connection attempt twice a second.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ]

        async def connect() -> tuple[grpc.aio.Channel, service_pb2_grpc.GRPCInferenceServiceStub]:
            channel = grpc.aio.insecure_channel(address, options=options)
            return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)

        self._channel, self._stub = self._run(connect())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            # The loop no longer runs: a coroutine handed to it would never finish, and its caller never return.
            coroutine.close()
            raise RequestError("UNAVAILABLE", f"triton at {self.address}: the client was closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _unary(self, method: str, request: Any, what: str, timeout_s: float | None = None) -> Any:
        async def call() -> Any:
            try:
                return await getattr(self._stub, method)(request, timeout=timeout_s or self.timeout_s)
            except grpc.aio.AioRpcError as error:
                return classify(error, what)

        outcome = self._run(call())
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def server_ready(self, timeout_s: float = 2.0) -> bool:
        try:
            return bool(self._unary("ServerReady", service_pb2.ServerReadyRequest(), "ServerReady", timeout_s).ready)
        except (RequestError, TritonModelError):
            return False

    def model_ready(self, model: str, timeout_s: float = 2.0) -> bool:
        try:
            request = service_pb2.ModelReadyRequest(name=model)
            return bool(self._unary("ModelReady", request, f"ModelReady {model}", timeout_s).ready)
        except (RequestError, TritonModelError):
            return False

    def not_ready_reasons(self, models: Sequence[str], timeout_s: float = 2.0) -> dict[str, str]:
        """Each of `models` that is not ready, with Triton's repository state and reason (a failed load says why)."""
        index = self._unary("RepositoryIndex", service_pb2.RepositoryIndexRequest(), "RepositoryIndex", timeout_s)
        # A Python model's failed load gives its stub's traceback over several lines; the start error is one line.
        states = {
            entry.name: f"{entry.state or 'UNKNOWN'}{': ' + ' '.join(entry.reason.split()) if entry.reason else ''}"
            for entry in index.models
        }
        return {m: states.get(m, "not in the model repository") for m in models if not self.model_ready(m, timeout_s)}

    def metadata(self, model: str) -> Any:
        return self._unary("ModelMetadata", service_pb2.ModelMetadataRequest(name=model), f"ModelMetadata {model}")

    def config(self, model: str) -> Any:
        """The model's configuration (model_config.proto's ModelConfig): its max_batch_size and parameters."""
        return self._unary("ModelConfig", service_pb2.ModelConfigRequest(name=model), f"ModelConfig {model}").config

    def statistics(self, model: str) -> Any:
        request = service_pb2.ModelStatisticsRequest(name=model)
        return self._unary("ModelStatistics", request, f"ModelStatistics {model}")

    def infer(
        self, model: str, inputs: dict[str, tuple[np.ndarray, str]], outputs: Sequence[str], max_rows: int
    ) -> dict[str, np.ndarray]:
        """inputs name -> (array, v2 datatype), rows first; returns each named output as an array. One ModelInfer,
        unless the rows exceed the model's max_batch_size: then one per slice (rows are independent)."""
        count = len(next(iter(inputs.values()))[0])
        if count <= max_rows:
            return self._infer_once(model, inputs, outputs)
        parts = [
            self._infer_once(model, {n: (v[i : i + max_rows], t) for n, (v, t) in inputs.items()}, outputs)
            for i in range(0, count, max_rows)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in outputs}

    def _infer_once(
        self, model: str, inputs: dict[str, tuple[np.ndarray, str]], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        request = service_pb2.ModelInferRequest(model_name=model)
        for name, (values, datatype) in inputs.items():
            request.inputs.add(name=name, datatype=datatype, shape=list(values.shape))
            request.raw_input_contents.append(_raw(values, datatype))
        for name in outputs:
            request.outputs.add(name=name)
        response = self._unary("ModelInfer", request, f"triton model {model!r}")
        if len(response.raw_output_contents) != len(response.outputs):
            raise TritonModelError(f"triton model {model!r}: answered without raw output contents")
        got = {
            tensor.name: _array(raw, tensor.datatype, tensor.shape)
            for tensor, raw in zip(response.outputs, response.raw_output_contents)
        }
        missing = [name for name in outputs if name not in got]
        if missing:
            raise TritonModelError(f"triton model {model!r}: answered without output {', '.join(missing)}")
        return got

    def close(self) -> None:
        async def close_channel() -> None:
            # Cancels the calls in flight, so each of their callers gets an answer before the loop stops.
            await self._channel.close()

        if self._closed:
            return
        self._run(close_channel())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
