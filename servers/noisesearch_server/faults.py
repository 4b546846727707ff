"""Fault injection for the orchestrator's failure tests (never for production).

A plan is a seed and a list of rules (servers/README.md documents the JSON). Whether a rule hits a
candidate depends only on (seed, the rule's index, the key of the candidate's final state), so a candidate
fails the same way in any batch, on every retry, and whether it came with a base or as a whole lineage.
Rules on whole calls (latency, request status) draw per call instead, so that a retry can pass, and can be
switched on and off while the server runs (`while_file`), so that a test can make a server slow or failing
for a while without restarting it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from .backend import CandidateError, ConfigError

# gRPC status names other than OK.
STATUS_NAMES = (
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)
FAIL_STAGES = ("validate", "score")
RAISE_STAGES = ("verifier", "xpred", "solve")
KINDS = ("fail", "nan", "raise", "latency_ms", "hang", "exit_after_requests", "request_status")
# Kinds that act on whole calls, drawn afresh per call: only these may come and go with `while_file`.
CALL_KINDS = ("latency_ms", "request_status")
MAX_LATENCY_MS = 600_000


class InjectedFault(RuntimeError):
    """What a batched call raises when a `raise` rule hits one of its rows."""


@dataclass(frozen=True)
class FaultRule:
    index: int
    kind: str
    id_pattern: re.Pattern[str] | None = None
    fraction: float = 1.0
    # fail: code, message, stage; request_status: code; raise: stage; nan: verifier.
    code: str = ""
    message: str = ""
    stage: str = ""
    verifier: str = ""
    latency_seconds: float = 0.0
    exit_after_requests: int = 0
    # A path: the rule acts only while a file exists there (empty: always).
    while_file: str = ""

    @property
    def name(self) -> str:
        return f"faults.rules[{self.index}]"


Hit = tuple[str, bytes]  # (candidate id, final state key)


@dataclass(frozen=True)
class CallFaults:
    latency_seconds: float
    hang: bool
    status: tuple[str, str] | None  # (gRPC status name, message) to fail the whole call with


class FaultPlan:
    def __init__(self, seed: int, rules: tuple[FaultRule, ...]) -> None:
        self.seed = seed
        self.rules = rules
        exits = [rule.exit_after_requests for rule in rules if rule.kind == "exit_after_requests"]
        self.exit_after_requests = min(exits) if exits else None
        # Only the event loop touches this (call_faults); the engine thread reads the immutable rules.
        self._arrivals: dict[bytes, int] = {}

    def check_verifiers(self, hosted: list[str]) -> None:
        for rule in self.rules:
            if rule.kind == "nan" and rule.verifier != "*" and rule.verifier not in hosted:
                raise _fail(
                    f"rules[{rule.index}].nan",
                    f"got {json.dumps(rule.verifier)}; want \"*\" or a verifier this server hosts: {', '.join(hosted)}",
                )

    def _draw(self, rule: FaultRule, data: bytes) -> bool:
        """True for a `fraction` of all `data`, the same every time for the same (seed, rule, data)."""
        if rule.fraction >= 1.0:
            return True
        digest = hashlib.blake2b(struct.pack("<QQ", self.seed, rule.index) + data, digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2.0**64 < rule.fraction

    def hits(self, rule: FaultRule, candidate_id: str, key: bytes) -> bool:
        if rule.id_pattern is not None and rule.id_pattern.search(candidate_id) is None:
            return False
        return self._draw(rule, key)

    def _hits_call(self, rule: FaultRule, candidates: list[Hit], call: bytes) -> bool:
        if not candidates:
            return False
        if rule.while_file and not os.path.exists(rule.while_file):
            return False
        if rule.id_pattern is not None and not any(rule.id_pattern.search(i) for i, _ in candidates):
            return False
        return self._draw(rule, call)

    def _first(self, kind: str, candidates: list[Hit], stage: str | None = None) -> FaultRule | None:
        for rule in self.rules:
            if rule.kind == kind and (stage is None or rule.stage == stage):
                if any(self.hits(rule, candidate_id, key) for candidate_id, key in candidates):
                    return rule
        return None

    def failure(self, stage: str, candidate_id: str, key: bytes) -> CandidateError | None:
        rule = self._first("fail", [(candidate_id, key)], stage)
        return None if rule is None else CandidateError(rule.code, rule.message)

    def raises(self, stage: str, candidates: list[Hit]) -> str | None:
        """The message of the exception a batched call of `stage` raises, or None when no row is hit."""
        rule = self._first("raise", candidates, stage)
        return None if rule is None else f"injected {stage} failure ({rule.name})"

    def nan(self, verifier: str, candidate_id: str, key: bytes) -> bool:
        return any(
            rule.kind == "nan" and rule.verifier in ("*", verifier) and self.hits(rule, candidate_id, key)
            for rule in self.rules
        )

    def call_faults(self, candidates: list[Hit]) -> CallFaults:
        """What happens to an Evaluate call as a whole, given its valid candidates; called once per call.

        `hang` hits a call holding any hit candidate, as candidate faults do. `latency_ms` and `request_status`
        draw once per call, over the keys of all its candidates and how many times this same request arrived
        before: a `fraction` of calls is hit, a retry is drawn afresh, and the same calls still meet the same
        faults run after run.
        """
        requested = b"".join(sorted(key for _, key in candidates))
        arrival = self._arrivals.get(requested, 0)
        self._arrivals[requested] = arrival + 1
        call = struct.pack("<Q", arrival) + requested
        status = next(
            (rule for rule in self.rules if rule.kind == "request_status" and self._hits_call(rule, candidates, call)),
            None,
        )
        return CallFaults(
            latency_seconds=sum(
                rule.latency_seconds
                for rule in self.rules
                if rule.kind == "latency_ms" and self._hits_call(rule, candidates, call)
            ),
            hang=self._first("hang", candidates) is not None,
            status=None if status is None else (status.code, f"injected {status.code} ({status.name})"),
        )


def load_fault_plan(source: str) -> FaultPlan:
    """`source` is the JSON itself (starting with "{") or a path to a file holding it."""
    if source.lstrip().startswith("{"):
        text = source
    else:
        try:
            text = Path(source).read_text()
        except OSError as error:
            raise ConfigError(f"--faults: cannot read {source!r} ({error.strerror}); pass a JSON file or inline JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--faults: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})")
    return parse_fault_plan(data)


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"--faults: {path}: {message}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_keys(path: str, value: object, allowed: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, f"got {json.dumps(value)}; want an object")
    unknown = [key for key in value if key not in allowed]
    if unknown:
        raise _fail(f"{path}.{unknown[0]}", f"unknown field; want one of {', '.join(allowed)}")
    return value


def _status(path: str, value: object) -> str:
    if value not in STATUS_NAMES:
        raise _fail(path, f"got {json.dumps(value)}; want a gRPC status name such as INTERNAL or UNAVAILABLE")
    return str(value)


def parse_fault_plan(data: object) -> FaultPlan:
    """Checks everything but the verifier names, which the backend checks (FaultPlan.check_verifiers)."""
    plan = _check_keys("faults", data, ("seed", "rules"))
    seed = plan.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed < 2**64:
        raise _fail("seed", f"got {json.dumps(seed)}; want an integer in [0, 2^64)")
    rules = plan.get("rules", [])
    if not isinstance(rules, list):
        raise _fail("rules", f"got {json.dumps(rules)}; want a list of rules")
    return FaultPlan(seed, tuple(_parse_rule(i, rule) for i, rule in enumerate(rules)))


def _parse_rule(index: int, data: object) -> FaultRule:
    path = f"rules[{index}]"
    rule = _check_keys(path, data, ("match", "fraction", "while_file", *KINDS))
    kinds = [kind for kind in KINDS if kind in rule]
    if len(kinds) != 1:
        found = ", ".join(kinds) or "none"
        raise _fail(path, f"got {len(kinds)} kinds ({found}); want exactly one of {', '.join(KINDS)}")
    kind = kinds[0]
    value = rule[kind]
    while_file = rule.get("while_file", "")
    if "while_file" in rule:
        if kind not in CALL_KINDS:
            raise _fail(f"{path}.while_file", f"only {' and '.join(CALL_KINDS)} rules can come and go; {kind} hits the same candidates every time")
        if not isinstance(while_file, str) or not while_file:
            raise _fail(f"{path}.while_file", f"got {json.dumps(while_file)}; want the path of a file whose existence turns the rule on")
    if kind == "exit_after_requests":
        if "match" in rule or "fraction" in rule:
            raise _fail(path, "exit_after_requests counts requests; it takes no match or fraction")
        if not _is_int(value) or value < 1:
            raise _fail(f"{path}.exit_after_requests", f"got {json.dumps(value)}; want an integer >= 1")
        return FaultRule(index, kind, exit_after_requests=value)

    id_pattern = None
    if "match" in rule:
        match = _check_keys(f"{path}.match", rule["match"], ("id",))
        pattern = match.get("id", "")
        if not isinstance(pattern, str):
            raise _fail(f"{path}.match.id", f"got {json.dumps(pattern)}; want a regular expression as a string")
        try:
            id_pattern = re.compile(pattern)
        except re.error as error:
            raise _fail(f"{path}.match.id", f"not a valid regular expression ({error})")
    fraction = rule.get("fraction", 1.0)
    if not _is_number(fraction) or not 0 <= fraction <= 1:
        raise _fail(f"{path}.fraction", f"got {json.dumps(fraction)}; want a number in [0, 1]")
    common = {"id_pattern": id_pattern, "fraction": float(fraction)}
    name = f"faults.rules[{index}]"

    if kind == "fail":
        fail = _check_keys(f"{path}.fail", value, ("code", "message", "stage"))
        if "code" not in fail:
            raise _fail(f"{path}.fail.code", "missing; want a gRPC status name such as INTERNAL")
        stage = fail.get("stage", "score")
        if stage not in FAIL_STAGES:
            raise _fail(f"{path}.fail.stage", f"got {json.dumps(stage)}; want one of {', '.join(FAIL_STAGES)}")
        message = fail.get("message", f"injected fault ({name})")
        if not isinstance(message, str):
            raise _fail(f"{path}.fail.message", f"got {json.dumps(message)}; want a string")
        code = _status(f"{path}.fail.code", fail["code"])
        return FaultRule(index, kind, code=code, message=message, stage=stage, **common)
    if kind == "nan":
        if not isinstance(value, str) or not value:
            raise _fail(f"{path}.nan", f"got {json.dumps(value)}; want \"*\" or a verifier name")
        return FaultRule(index, kind, verifier=value, **common)
    if kind == "raise":
        if value not in RAISE_STAGES:
            raise _fail(f"{path}.raise", f"got {json.dumps(value)}; want one of {', '.join(RAISE_STAGES)}")
        return FaultRule(index, kind, stage=value, **common)
    if kind == "latency_ms":
        if not _is_number(value) or not 0 <= value <= MAX_LATENCY_MS:
            raise _fail(f"{path}.latency_ms", f"got {json.dumps(value)}; want milliseconds in [0, {MAX_LATENCY_MS}]")
        return FaultRule(index, kind, latency_seconds=value / 1000, while_file=while_file, **common)
    if kind == "hang":
        if value is not True:
            raise _fail(f"{path}.hang", f"got {json.dumps(value)}; want true (or leave the rule out)")
        return FaultRule(index, kind, **common)
    return FaultRule(index, kind, code=_status(f"{path}.request_status", value), while_file=while_file, **common)
