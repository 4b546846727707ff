"""Fuzzing every RPC of a real model server (docs/fuzzing.md, "Model server").

A gRPC server of the embedded gmm model runs in-process, on an event loop of its own thread, and a plain
client sends it two kinds of hostile input for each RPC the proto declares:

- structured: messages built from the proto's descriptors, either hostile throughout (NaN, infinities, -0,
  huge and negative numbers, empty, huge and odd-unicode strings, huge repeated fields, wrong-length tensors)
  or a valid request with a few of its fields replaced by such values, so that validation deep inside a
  candidate is reached too;
- raw bytes: a valid encoded request mutated at the byte level (flips, cuts, splices, wire types changed,
  fields of another message, unknown and deeply nested groups), sent with an identity serializer.

Properties, for every input: the call returns within its deadline; its status is OK, INVALID_ARGUMENT, or
NOT_FOUND for Evaluate's `model` field (RESOURCE_EXHAUSTED only for a message over the server's size limit),
never UNKNOWN or INTERNAL; a refusal's message starts with the path of a field the request really has (or the
request's own name, for bytes that break off before any field); a refused candidate fails alone with such a
path; every score is finite; the server answers Describe afterwards; and no call grows the process's memory
by RSS_GROWTH_PER_CALL_CAP_MIB, nor all of them together by RSS_GROWTH_CAP_MIB.

Budget: NOISESEARCH_FUZZ_EXAMPLES inputs per RPC and kind (BUDGET_EXAMPLES in `npm test`);
NOISESEARCH_FUZZ_SEED picks a seed (unset: derandomized, so `npm test` tries the same inputs every run);
NOISESEARCH_FUZZ_REPORT names a JSON file the counts of inputs tried are written to (scripts/fuzz.mjs prints it).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import struct
import threading
import time
from collections import Counter

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from noisesearch_server.backend import MAX_POPULATION_SAMPLES, MAX_SCORE_SAMPLES
from noisesearch_server.engine import SOLVERS
from noisesearch_server.proto import load
from noisesearch_server.server import ServerConfig, start_server
from noisesearch_server.validation import MAX_OPS, MAX_PERTURBATIONS, MAX_STEPS

pb, _ = load()

BUDGET_EXAMPLES = 150
EXAMPLES = int(os.environ.get("NOISESEARCH_FUZZ_EXAMPLES", BUDGET_EXAMPLES))
SEED = os.environ.get("NOISESEARCH_FUZZ_SEED")
REPORT = os.environ.get("NOISESEARCH_FUZZ_REPORT")

# The fuzzed server's limits: 4 MiB messages (gRPC's default, the least --max-message-mb takes) so that an
# oversized message is cheap to send; 4,000 NFEs a request so that the costliest valid request takes about two
# seconds (one row at a time, ~0.45 ms an NFE) and the deadline below tells a hang from honest work.
MAX_MESSAGE_MB = 4
MAX_REQUEST_NFE = 4_000
DEADLINE_S = 30.0
# Describe answers in a millisecond; the generous deadline is for a machine shared by other test runs (a
# 5 s one failed once in 10,000 inputs on a 2-core machine running three other suites, and never again).
DESCRIBE_DEADLINE_S = 30.0
# Memory: the process's RSS change while calls are in flight, summed over the run (hypothesis's own memory,
# which grows with the inputs it has made, is left out by not counting between calls), may not pass the
# first cap: the trajectory cache is bounded at CACHE_MB and a request may make the server keep nothing else.
# No single call may grow it by the second: a message may not make the server allocate without limit.
CACHE_MB = 8.0
RSS_GROWTH_CAP_MIB = 128
RSS_GROWTH_PER_CALL_CAP_MIB = 32

SIGMA_MAX, SIGMA_MIN, NUM_CLASSES, DIM = 40.0, 0.02, 10, 16
VERIFIERS = ("gmm-oracle", "gmm-classifier", "gmm-selfsup")
PACKAGE = pb.DESCRIPTOR.package
FUZZED_SERVICES = ("Denoiser", "Verifier")
# What a refusal may be, besides INVALID_ARGUMENT (docs/fuzzing.md): Evaluate names an unknown model NOT_FOUND.
EXTRA_REFUSALS = {f"/{PACKAGE}.Denoiser/Evaluate": {grpc.StatusCode.NOT_FOUND}}
# A candidate that fails alone: bad (INVALID_ARGUMENT), a base not held here (NOT_FOUND), a verifier that
# cannot score it (FAILED_PRECONDITION).
CANDIDATE_ERROR_CODES = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"}

tried: Counter[str] = Counter()
# Inputs by RPC, kind and status, so a report shows how many got past decoding and validation.
outcomes: Counter[str] = Counter()


def rpc_methods() -> dict[str, object]:
    """Every RPC of the fuzzed services, by full method name, from the proto itself."""
    methods = {}
    for name in FUZZED_SERVICES:
        service = pb.DESCRIPTOR.services_by_name[name]
        for method in service.methods:
            methods[f"/{service.full_name}/{method.name}"] = method
    return methods


def message_class(descriptor):
    return getattr(pb, descriptor.name)


def fuzz_settings(test):
    configured = settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=SEED is None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        print_blob=True,
    )(test)
    return configured if SEED is None else seed(int(SEED))(configured)


# The server, on a thread of its own: hypothesis drives plain functions, and the server must keep its loop.


class FuzzedServer:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-server", daemon=True)
        self.thread.start()
        config = ServerConfig(
            port=0, cache_mb=CACHE_MB, max_message_mb=MAX_MESSAGE_MB, max_request_nfe=MAX_REQUEST_NFE
        )
        self.running = asyncio.run_coroutine_threadsafe(start_server(config), self.loop).result(30)
        self.channel = grpc.insecure_channel(
            self.running.address,
            options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
        )
        self._calls = {
            name: self.channel.unary_unary(name, request_serializer=None, response_deserializer=None)
            for name in rpc_methods()
        }
        # Keys the server returned, so that later candidates continue them (and, once evicted, miss them).
        self.bases: list[tuple[bytes, int | None]] = []

    def call(self, method: str, data: bytes, timeout: float = DEADLINE_S) -> tuple[grpc.StatusCode, bytes | str]:
        """(status, response bytes when OK else the details)."""
        try:
            return grpc.StatusCode.OK, self._calls[method](data, timeout=timeout)
        except grpc.RpcError as error:
            return error.code(), error.details() or ""

    def stop(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.running.stop(grace=0.5), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


@pytest.fixture(scope="module")
def server():
    fuzzed = FuzzedServer()
    # Warm up the costlier paths once, so that lazily built state is not counted as growth.
    fuzzed.call(f"/{PACKAGE}.Denoiser/Evaluate", valid_evaluate_example().SerializeToString())
    fuzzed.call(f"/{PACKAGE}.Verifier/Population", valid_population_example().SerializeToString())
    fuzzed.grown_in_calls = 0.0
    yield fuzzed
    fuzzed.stop()
    if REPORT:
        with open(REPORT, "w") as report:
            json.dump(
                {
                    "examples_per_kind": EXAMPLES,
                    "seed": SEED,
                    "tried": dict(sorted(tried.items())),
                    "outcomes": dict(sorted(outcomes.items())),
                    "rss_growth_in_calls_mib": round(fuzzed.grown_in_calls, 1),
                },
                report,
                indent=1,
            )


# Field paths: a refusal must name a field the request really has.


def _segments(path: str) -> list[tuple[str, int | None]]:
    parts = []
    for segment in path.split("."):
        name, bracket, rest = segment.partition("[")
        index = None
        if bracket:
            if not rest.endswith("]") or not rest[:-1].isdigit():
                raise ValueError(segment)
            index = int(rest[:-1])
        parts.append((name, index))
    return parts


def names_a_field(descriptor, message: bytes | None, details: str) -> bool:
    """Whether `details` starts with 'PATH: ' where PATH is a field path of `descriptor` (indices within the
    repeated fields of `message`, when it decodes), or the message's own name."""
    path, sep, _ = details.partition(": ")
    if not sep:
        return False
    if path == descriptor.name:
        return True
    try:
        segments = _segments(path)
    except ValueError:
        return False
    try:
        decoded = message_class(descriptor).FromString(message) if message is not None else None
    except Exception:
        decoded = None
    current, value = descriptor, decoded
    for name, index in segments:
        if current is None or name not in current.fields_by_name:
            return False
        field = current.fields_by_name[name]
        repeated = field.is_repeated
        if index is not None and not repeated:
            return False
        child = getattr(value, name) if value is not None else None
        if index is not None and child is not None and index >= len(child):
            return False
        if index is not None and child is not None:
            child = child[index]
        value = child if field.type == FieldDescriptor.TYPE_MESSAGE else None
        current = field.message_type
    return True


# Hostile values.

HOSTILE_DOUBLES = [
    math.nan, -math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, -5e-324, 1e308, -1e308, 1.7976931348623157e308,
    SIGMA_MAX, SIGMA_MAX * (1 + 1e-12), SIGMA_MAX * (1 + 1e-6), SIGMA_MIN, SIGMA_MIN * (1 - 1e-9), 1.0, -1.0,
    1.0000001, 1e-300,
]
HOSTILE_FLOATS32 = [math.nan, math.inf, -math.inf, -0.0, 3.4028234663852886e38, -3.4028234663852886e38, 1e-45, 1e30]
HOSTILE_UINTS = [0, 1, 2, 9, 10, 128, 129, MAX_STEPS, MAX_STEPS + 1, 2**31 - 1, 2**31, 2**32 - 1]
HOSTILE_UINT64S = HOSTILE_UINTS + [2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]
HOSTILE_INT32S = [-(2**31), -1, 0, 1, NUM_CLASSES - 1, NUM_CLASSES, 2**31 - 1]
HOSTILE_TEXTS = [
    "", " ", "gmm", "GMM", "heun", "euler", "euler_ancestral", "dpm++", "karras", "shifted", *VERIFIERS,
    "gmm-oracle\x00", "\x00", "\u202e\u0647", "\U0001f600" * 3, "\ud7ff\ue000", "a" * 70_000, "é" * 10,
    "\u2028", "../../etc/passwd", "%s%n", "<script>",
]
HOSTILE_BYTES = [b"", b"\x00" * 16, b"\xff" * 16, b"short", b"\x00" * 15, b"\x00" * 17, os.urandom(16), b"x" * 70_000]
# Repeated fields this long reach every count limit: max_batch 128, MAX_OPS, MAX_PERTURBATIONS, the samples'.
HUGE_COUNTS = [129, 10_001, MAX_OPS + 1]
assert MAX_PERTURBATIONS + 1 in HUGE_COUNTS and MAX_SCORE_SAMPLES + 1 in HUGE_COUNTS
assert MAX_POPULATION_SAMPLES + 1 in HUGE_COUNTS

def hostile_scalar(field) -> st.SearchStrategy:
    kind = field.type
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.sampled_from(HOSTILE_DOUBLES) | st.floats(allow_nan=True, allow_infinity=True)
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.sampled_from(HOSTILE_FLOATS32) | st.floats(width=32)
    if kind == FieldDescriptor.TYPE_UINT32:
        return st.sampled_from(HOSTILE_UINTS) | st.integers(0, 2**32 - 1)
    if kind == FieldDescriptor.TYPE_UINT64:
        return st.sampled_from(HOSTILE_UINT64S) | st.integers(0, 2**64 - 1)
    if kind == FieldDescriptor.TYPE_INT32:
        return st.sampled_from(HOSTILE_INT32S) | st.integers(-(2**31), 2**31 - 1)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return st.sampled_from(HOSTILE_TEXTS) | st.text(max_size=40)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.sampled_from(HOSTILE_BYTES) | st.binary(max_size=40)
    raise AssertionError(f"no hostile values for field {field.full_name} of type {kind}: add them")


def is_repeated(field) -> bool:
    return field.is_repeated


@st.composite
def hostile_message(draw, descriptor, depth: int = 0, huge_allowed: bool = True):
    """A message of `descriptor` with every field unset or hostile, submessages recursively. Repeated fields
    may be huge, but not inside a huge one: 10,001 samples of 10,001 values each would be a 400 MB request
    (over any size limit, and minutes to build)."""
    message = message_class(descriptor)()
    chosen_oneofs = {
        oneof.name: draw(st.sampled_from([None, *oneof.fields])) for oneof in descriptor.oneofs
        if not oneof.name.startswith("_")
    }
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_") and chosen_oneofs[oneof.name] is not field:
            continue
        if oneof is None and draw(st.booleans()):
            continue
        fill_field(draw, message, field, depth, huge_allowed)
    return message


def fill_field(draw, message, field, depth: int, huge_allowed: bool = True) -> None:
    submessage = field.type == FieldDescriptor.TYPE_MESSAGE
    if submessage and depth > 4:
        return
    if is_repeated(field):
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            return
        huge = huge_allowed and draw(st.integers(0, 19)) == 0
        element = hostile_message(field.message_type, depth + 1, not huge) if submessage else hostile_scalar(field)
        values = [draw(element)] * draw(st.sampled_from(HUGE_COUNTS)) if huge else draw(st.lists(element, max_size=4))
        container = getattr(message, field.name)
        if submessage:
            for value in values:
                container.add().CopyFrom(value)
        else:
            container.extend(values)
    elif submessage:
        getattr(message, field.name).CopyFrom(draw(hostile_message(field.message_type, depth + 1, huge_allowed)))
    else:
        setattr(message, field.name, draw(hostile_scalar(field)))


# Valid requests, to mutate.


def sigma_strategy(low: float, high: float) -> st.SearchStrategy:
    return st.sampled_from([low, high]) | st.floats(low, high)


@st.composite
def valid_lineage_ops(draw, start: float = SIGMA_MAX):
    ops, sigma = [], start
    for _ in range(draw(st.integers(0, 3))):
        if sigma > SIGMA_MIN and draw(st.integers(0, 3)) > 0:
            target = draw(st.just(0.0) | st.floats(SIGMA_MIN, sigma, exclude_max=True))
            solver = draw(st.sampled_from(SOLVERS))
            seeded = solver == "euler_ancestral"
            ops.append(pb.Op(solve=pb.Solve(
                sigma_from=sigma, sigma_to=target, solver=solver, steps=draw(st.integers(1, 6)),
                schedule=draw(st.sampled_from(["", "karras"])), seed=draw(st.integers(0, 2**64 - 1)) if seeded else 0,
            )))
        elif sigma < SIGMA_MAX:
            target = draw(st.floats(max(sigma, SIGMA_MIN), SIGMA_MAX, exclude_min=True))
            ops.append(pb.Op(renoise=pb.Renoise(sigma_from=sigma, sigma_to=target, seed=draw(st.integers(0, 2**64 - 1)))))
        else:
            break
        sigma = ops[-1].solve.sigma_to if ops[-1].HasField("solve") else ops[-1].renoise.sigma_to
    return ops


@st.composite
def valid_condition(draw):
    condition = pb.Condition()
    if draw(st.booleans()):
        condition.class_label = draw(st.integers(0, NUM_CLASSES - 1))
    if draw(st.booleans()):
        condition.guidance_scale = draw(st.floats(0, 8))
    return condition


@st.composite
def valid_candidate(draw, index: int, bases: list[tuple[bytes, int | None]]):
    candidate = pb.Candidate(id=draw(st.sampled_from([f"c{index}", ""]) | st.text(max_size=8)))
    if draw(st.integers(0, 3)) == 0:
        # Continue a state the server returned (its sigma unknown here: the server says so when ops misfit), or
        # a key it never made. Drawn the same way whatever the pool holds, so that hypothesis can replay.
        # The message's shape (which fields are set) must not depend on the pool either: mutate() picks among them.
        made_up, index = draw(st.binary(min_size=16, max_size=16)), draw(st.integers(0, 63))
        made_up_label = draw(st.integers(0, NUM_CLASSES - 1))
        base, label = bases[index % len(bases)] if bases else (made_up, None)
        candidate.base = base
        candidate.condition.class_label = made_up_label if label is None else label
        candidate.lineage.ops.extend(draw(valid_lineage_ops(start=draw(sigma_strategy(0.0, SIGMA_MAX)))))
    else:
        candidate.lineage.noise.seed = draw(st.integers(0, 2**64 - 1))
        for _ in range(draw(st.integers(0, 2))):
            candidate.lineage.noise.perturbations.add(seed=draw(st.integers(0, 2**64 - 1)), cosine=draw(st.floats(-1, 1)))
        candidate.lineage.ops.extend(draw(valid_lineage_ops()))
        candidate.condition.CopyFrom(draw(valid_condition()))
    candidate.score_xpred = draw(st.booleans())
    return candidate


@st.composite
def valid_evaluate(draw, bases):
    count = draw(st.integers(1, 4))
    return pb.EvaluateRequest(
        model=draw(st.sampled_from(["", "gmm"])),
        candidates=[draw(valid_candidate(i, bases)) for i in range(count)],
        verifiers=draw(st.lists(st.sampled_from(VERIFIERS), max_size=3, unique=True)),
        return_samples=draw(st.booleans()),
    )


def valid_evaluate_example():
    ops = [pb.Op(solve=pb.Solve(sigma_from=SIGMA_MAX, sigma_to=0.0, solver="heun", steps=4))]
    candidate = pb.Candidate(id="warm", lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=1), ops=ops), condition=pb.Condition(class_label=1))
    return pb.EvaluateRequest(candidates=[candidate], verifiers=list(VERIFIERS), return_samples=True)


finite_values = st.lists(st.floats(-50, 50, width=32), min_size=DIM, max_size=DIM)


@st.composite
def valid_sample(draw):
    sample = pb.Sample(values=draw(finite_values), shape=[DIM], xpred=draw(finite_values))
    if draw(st.integers(0, 3)) > 0:
        sample.condition.class_label = draw(st.integers(0, NUM_CLASSES - 1))
    return sample


@st.composite
def valid_score(draw):
    return pb.ScoreRequest(
        verifiers=draw(st.lists(st.sampled_from(VERIFIERS), max_size=3, unique=True)),
        samples=draw(st.lists(valid_sample(), min_size=1, max_size=4)),
    )


@st.composite
def valid_population(draw):
    return pb.PopulationRequest(samples=draw(st.lists(valid_sample(), min_size=1, max_size=12)))


def valid_population_example():
    return pb.PopulationRequest(
        samples=[pb.Sample(values=[0.1 * i] * DIM, shape=[DIM], condition=pb.Condition(class_label=i)) for i in range(4)]
    )


def valid_request(method_name: str, bases) -> st.SearchStrategy:
    name = method_name.rsplit("/", 1)[1]
    if name == "Evaluate":
        return valid_evaluate(bases)
    if name == "Score":
        return valid_score()
    if name == "Population":
        return valid_population()
    if name == "Describe":
        return st.just(message_class(rpc_methods()[method_name].input_type)())
    raise AssertionError(f"no valid requests for {method_name}: add them to valid_request")


def field_slots(message, path: str = "") -> list[tuple[object, object, str]]:
    """(message, field, path) of every field of `message` and of its set submessages."""
    slots = []
    for field in message.DESCRIPTOR.fields:
        field_path = f"{path}.{field.name}" if path else field.name
        slots.append((message, field, field_path))
        if field.type != FieldDescriptor.TYPE_MESSAGE or (field.message_type.GetOptions().map_entry):
            continue
        if is_repeated(field):
            for i, child in enumerate(getattr(message, field.name)):
                slots.extend(field_slots(child, f"{field_path}[{i}]"))
        elif message.HasField(field.name):
            slots.extend(field_slots(getattr(message, field.name), field_path))
    return slots


def mutate(draw, message) -> None:
    """Replaces 1 to 3 fields of `message` (anywhere inside it) with hostile values, or clears them."""
    for _ in range(draw(st.integers(1, 3))):
        slots = field_slots(message)
        if not slots:
            return
        owner, field, _ = draw(st.sampled_from(slots))
        action = draw(st.integers(0, 3))
        if action == 0:
            owner.ClearField(field.name)
        elif is_repeated(field) and field.type != FieldDescriptor.TYPE_MESSAGE and action == 1:
            # A wrong-length tensor: a few values too many or too few, or far too many.
            container = getattr(owner, field.name)
            count = draw(st.sampled_from([DIM, DIM - 1, DIM + 1, 0, 1, 10_001]))
            del container[:]
            container.extend([draw(hostile_scalar(field))] * count)
        else:
            owner.ClearField(field.name)
            fill_field(draw, owner, field, depth=2)


@st.composite
def structured_request(draw, method_name: str, bases):
    descriptor = rpc_methods()[method_name].input_type
    if not descriptor.fields:
        # A message without fields can only be hostile through fields it does not have.
        return draw(unknown_fields())
    if draw(st.integers(0, 2)) == 0:
        return draw(hostile_message(descriptor)).SerializeToString()
    message = draw(valid_request(method_name, bases))
    mutate(draw, message)
    return message.SerializeToString()


# Raw bytes.


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def unknown_fields(draw):
    """Well-formed fields of numbers and wire types the message may or may not have, groups nested up to 120."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        number = draw(st.sampled_from([1, 2, 3, 4, 5, 15, 16, 2047, 2**29 - 1]) | st.integers(1, 2**29 - 1))
        wire = draw(st.sampled_from([0, 1, 2, 3, 5]))
        tag = _varint(number << 3 | wire)
        if wire == 0:
            parts.append(tag + _varint(draw(st.integers(0, 2**64 - 1))))
        elif wire == 1:
            parts.append(tag + struct.pack("<d", draw(st.floats(allow_nan=True))))
        elif wire == 5:
            parts.append(tag + struct.pack("<I", draw(st.integers(0, 2**32 - 1))))
        elif wire == 2:
            payload = draw(st.binary(max_size=24))
            parts.append(tag + _varint(len(payload)) + payload)
        else:
            depth = draw(st.sampled_from([1, 2, 99, 100, 101, 120]))
            parts.append(tag * depth + _varint(number << 3 | 4) * depth)
    return b"".join(parts)


OTHER_MESSAGES = [
    pb.Sample(values=[1.0] * DIM, shape=[DIM], xpred=[0.5] * DIM, condition=pb.Condition(prompt="a cat")),
    pb.Candidate(id="x", lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=3)), base=b"\x01" * 16),
    pb.Solve(sigma_from=SIGMA_MAX, sigma_to=0.0, solver="heun", steps=3),
    pb.ModelDescription(model="gmm", latent_shape=[DIM], sigma_max=SIGMA_MAX),
    pb.EvaluateResponse(results=[pb.CandidateResult(id="r", scores={"gmm-oracle": 1.5})]),
]


@st.composite
def raw_request(draw, method_name: str, bases):
    data = bytearray(draw(valid_request(method_name, bases)).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.integers(0, 8))
        at = draw(st.integers(0, len(data)))
        if action == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif action == 1:
            del data[at:]
        elif action == 2:
            del data[at : at + draw(st.integers(1, 8))]
        elif action == 3:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == 4 and data:
            # Another wire type for whatever tag sits here: type confusion without other damage.
            index = min(at, len(data) - 1)
            data[index] = (data[index] & ~0x07) | draw(st.integers(0, 7))
        elif action == 5:
            data[at:at] = draw(st.sampled_from(OTHER_MESSAGES)).SerializeToString()
        elif action == 6:
            data[at:at] = draw(unknown_fields())
        elif action == 7 and data:
            start = draw(st.integers(0, len(data) - 1))
            data[at:at] = data[start : start + draw(st.integers(1, 32))] * draw(st.sampled_from([1, 2, 100]))
        else:
            # A length prefix that lies: a field claims far more bytes than follow.
            data[at:at] = b"\x12" + _varint(draw(st.sampled_from([2**31, 2**32 - 1, 2**63, 1 << 20])))
    return bytes(data)


# The properties.


def check_response(method_name: str, request: bytes, status: grpc.StatusCode, answer, elapsed: float, server) -> None:
    descriptor = rpc_methods()[method_name].input_type
    assert elapsed < DEADLINE_S, f"{method_name} took {elapsed:.1f} s"
    assert status != grpc.StatusCode.DEADLINE_EXCEEDED, f"{method_name} hung past its {DEADLINE_S} s deadline"
    if status == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert len(request) > MAX_MESSAGE_MB << 20, f"RESOURCE_EXHAUSTED for {len(request)} bytes: {answer}"
        return
    assert len(request) <= MAX_MESSAGE_MB << 20, f"{len(request)} bytes, over the limit, answered {status}"
    allowed = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} | EXTRA_REFUSALS.get(method_name, set())
    assert status in allowed, f"{method_name} answered {status.name}: {answer}"
    if status != grpc.StatusCode.OK:
        decodes = _decodes(descriptor, request)
        assert names_a_field(descriptor, request if decodes else None, answer), f"names no field: {answer!r}"
        return
    parsed = message_class(descriptor).FromString(request)
    output = message_class(rpc_methods()[method_name].output_type).FromString(answer)
    name = method_name.rsplit("/", 1)[1]
    if name == "Evaluate":
        check_evaluate(parsed, output, server)
    elif name == "Score":
        assert len(output.results) == len(parsed.samples)
        for result in output.results:
            assert set(result.scores) == set(parsed.verifiers)
            assert all(math.isfinite(score) for score in result.scores.values()), result
    elif name == "Population":
        assert math.isfinite(output.frechet_distance) and math.isfinite(output.inception_score), output
        assert output.samples == len(parsed.samples)


def _decodes(descriptor, data: bytes) -> bool:
    try:
        message_class(descriptor).FromString(data)
    except Exception:
        return False
    return True


def check_evaluate(request, response, server) -> None:
    assert [result.id for result in response.results] == [candidate.id for candidate in request.candidates]
    for i, (candidate, result) in enumerate(zip(request.candidates, response.results)):
        if result.HasField("error"):
            assert result.error.code in CANDIDATE_ERROR_CODES, f"candidates[{i}] failed: {result.error}"
            assert result.error.message.startswith(f"candidates[{i}]"), result.error.message
            assert names_a_field(request.DESCRIPTOR, request.SerializeToString(), result.error.message), result.error
            assert not result.scores
            continue
        assert set(result.scores) == set(request.verifiers), result
        assert all(math.isfinite(score) for score in result.scores.values()), result
        assert all(math.isfinite(value) for value in result.sample), result
        if result.state_key and len(server.bases) < 64:
            label = candidate.condition.class_label if candidate.condition.HasField("class_label") else None
            server.bases.append((result.state_key, label))


def still_answers(server) -> None:
    for service in FUZZED_SERVICES:
        method = f"/{PACKAGE}.{service}/Describe"
        status, answer = server.call(method, b"", timeout=DESCRIBE_DEADLINE_S)
        assert status == grpc.StatusCode.OK, f"{method} after the input: {status.name} {answer}"


def fuzz(server, method_name: str, kind: str, strategy) -> None:
    @fuzz_settings
    @given(data=st.data())
    def one_input(data):
        request = data.draw(strategy(method_name, server.bases), label="request")
        started, rss_before = time.monotonic(), rss_mib()
        status, answer = server.call(method_name, request)
        grown = rss_mib() - rss_before
        # Signed: memory a call frees (numpy's large arrays go back to the system) offsets what an earlier took.
        server.grown_in_calls += grown
        assert grown < RSS_GROWTH_PER_CALL_CAP_MIB, f"one {method_name} call grew the process by {grown:.0f} MiB"
        check_response(method_name, request, status, answer, time.monotonic() - started, server)
        still_answers(server)
        tried[f"{method_name} {kind}"] += 1
        outcomes[f"{method_name} {kind} {status.name}"] += 1

    before = tried[f"{method_name} {kind}"]
    one_input()
    assert tried[f"{method_name} {kind}"] > before
    growth = server.grown_in_calls
    assert growth < RSS_GROWTH_CAP_MIB, f"calls grew the process by {growth:.0f} MiB in all, over {RSS_GROWTH_CAP_MIB} MiB"


def message_types(descriptor, seen=None) -> list:
    """`descriptor` and every message type inside it."""
    seen = {} if seen is None else seen
    if descriptor.full_name not in seen:
        seen[descriptor.full_name] = descriptor
        for field in descriptor.fields:
            if field.message_type is not None and not field.message_type.GetOptions().map_entry:
                message_types(field.message_type, seen)
    return list(seen.values())


def test_every_rpc_of_the_proto_is_fuzzed():
    """A new RPC or field type fails here until valid_request and hostile_scalar cover it."""
    methods = rpc_methods()
    assert set(pb.DESCRIPTOR.services_by_name) == set(FUZZED_SERVICES), "fuzz the new service: FUZZED_SERVICES"
    assert len(methods) == 5, f"the proto has {len(methods)} RPCs; this file was written for 5: fuzz the new ones"
    for method_name, method in methods.items():
        valid_request(method_name, [])
        for descriptor in message_types(method.input_type):
            for field in descriptor.fields:
                if field.type != FieldDescriptor.TYPE_MESSAGE:
                    hostile_scalar(field)


@pytest.mark.parametrize("method_name", sorted(rpc_methods()))
def test_structured_inputs(server, method_name):
    fuzz(server, method_name, "structured", structured_request)


@pytest.mark.parametrize("method_name", sorted(rpc_methods()))
def test_raw_byte_inputs(server, method_name):
    fuzz(server, method_name, "raw", raw_request)
