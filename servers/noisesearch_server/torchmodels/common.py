"""What every PyTorch model and verifier shares: the row condition, device and dtype, folder checks, a
byte-bounded cache for prompt embeddings, and the two contracts the engine adapts (TorchDenoiser and
TorchVerifier). Nothing here downloads: every loader reads a folder the user names, offline."""

from __future__ import annotations

import os

# Before diffusers or transformers are imported anywhere: a missing file must fail, never fetch.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import torch

from ..backend import ConfigError, ModelSpec, RowCondition, VerifierSpec  # noqa: F401 (RowCondition: re-exported)


def pick_device(flag: str = "auto") -> torch.device:
    """"auto": the first CUDA device when there is one, else the CPU; otherwise a torch device string."""
    if flag == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(flag)
    except RuntimeError as error:
        raise ConfigError(f"--device: {error}; want auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {flag}: no CUDA device is visible to torch; use --device cpu or auto")
    return device


def pick_dtype(device: torch.device, flag: str = "auto") -> torch.dtype:
    """bf16 on a GPU, fp32 on the CPU (bf16 matmuls there are slow and imprecise), unless a flag says."""
    named = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if flag == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if flag not in named:
        raise ConfigError(f"--dtype: got {flag!r}; want auto, {', '.join(named)}")
    return named[flag]


def require_files(what: str, folder: str | Path, required: Sequence[str]) -> Path:
    """The folder, when it has every file in `required` (paths relative to it; "a|b" accepts either);
    else one ConfigError naming the folder and everything missing, so a user fixes it in one go."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{what}: folder {str(root)!r} does not exist; point it at a local copy of the weights")
    missing = [entry for entry in required if not any((root / option).exists() for option in entry.split("|"))]
    if missing:
        named = ", ".join(entry.replace("|", " or ") for entry in missing)
        raise ConfigError(f"{what}: folder {str(root)!r} is incomplete: missing {named}")
    return root


K = TypeVar("K")
V = TypeVar("V")


class ByteBoundedCache(Generic[K, V]):
    """LRU whose bound is bytes, not entries: one T5 prompt embedding is megabytes, one class label is not."""

    def __init__(self, capacity_bytes: int, size_of: Callable[[V], int]) -> None:
        self.capacity_bytes = capacity_bytes
        self.size_of = size_of
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return found[0]
        self.misses += 1
        value = make()
        size = self.size_of(value)
        if size <= self.capacity_bytes:
            self._entries[key] = (value, size)
            self.bytes += size
            while self.bytes > self.capacity_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted
                self.evictions += 1
        return value


def tensor_bytes(value: torch.Tensor | Sequence[torch.Tensor]) -> int:
    tensors = [value] if isinstance(value, torch.Tensor) else list(value)
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class TorchDenoiser(ABC):
    """D(x, sigma, condition) -> x-prediction for one model, in the engine's coordinates for its process
    (spec.process): "ve" states are x = x0 + sigma * n, "flow" states are x = (1 - sigma) * x0 + sigma * n.
    Rows are independent: a row's output never depends on the other rows of its batch."""

    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype

    @abstractmethod
    def x0(self, x: torch.Tensor, sigma: float, conditions: Sequence[RowCondition]) -> torch.Tensor:
        """x: [B, *spec.latent_shape] float32 on self.device; returns the same shape, float32."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Clean latents [B, *spec.latent_shape] -> RGB images [B, 3, H, W], float32 in [0, 1], on self.device."""


class TorchVerifier(ABC):
    """Scores decoded images; `probes` (self-supervised verifiers only) are the decoded x-predictions
    taken at sigma <= spec.xpred_sigma, one per row."""

    spec: VerifierSpec
    device: torch.device

    @abstractmethod
    def score(
        self, images: torch.Tensor, conditions: Sequence[RowCondition], probes: torch.Tensor | None
    ) -> torch.Tensor:
        """images: [B, 3, H, W] float32 in [0, 1]; returns [B] scores (higher is better)."""
