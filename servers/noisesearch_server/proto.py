"""The contract, loaded from the .proto at run time so no generated code is ever out of date."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from types import ModuleType

import grpc

PROTO_FILE = "noisesearch/v1/noisesearch.proto"


def proto_root() -> Path:
    configured = os.environ.get("NOISESEARCH_PROTO_DIR")
    return Path(configured) if configured else (Path(__file__).parent / ".." / ".." / "proto").resolve()


@functools.cache
def load() -> tuple[ModuleType, ModuleType]:
    """(messages, services) for noisesearch.v1."""
    root = proto_root()
    if not (root / PROTO_FILE).is_file():
        raise FileNotFoundError(f"{PROTO_FILE} not found under {root}; set NOISESEARCH_PROTO_DIR to the proto root")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    return grpc.protos_and_services(PROTO_FILE)


def service_name(service: str) -> str:
    messages, _ = load()
    return messages.DESCRIPTOR.services_by_name[service].full_name
