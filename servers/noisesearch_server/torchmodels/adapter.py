"""The engine speaks numpy float64 over flattened states; PyTorch models and verifiers speak tensors on a device.
These adapters are the one place that converts, so the engine's solvers, noise recipes, renoising, lineage cache
and batching run unchanged over any TorchDenoiser, and verifiers score decoded images without leaving the device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from ..backend import ModelSpec, Rows
from ..images import decode_png, encode_pngs
from .common import TorchDenoiser, TorchVerifier

# Decoding 1024-px images runs the VAE at full resolution: a few at a time bounds its activation memory.
DECODE_CHUNK = 4


class TorchModel:
    def __init__(self, denoiser: TorchDenoiser) -> None:
        self.denoiser = denoiser
        self.spec: ModelSpec = denoiser.spec
        self.device = denoiser.device

    def _tensor(self, flat: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32)).reshape(
            len(flat), *self.spec.latent_shape
        ).to(self.device)

    @torch.inference_mode()
    def denoise(self, x: np.ndarray, sigma: float, rows: Rows) -> np.ndarray:
        x0 = self.denoiser.x0(self._tensor(x), sigma, rows.conditions)
        return x0.float().cpu().numpy().reshape(len(x), -1).astype(np.float64)

    @torch.inference_mode()
    def decode(self, samples: np.ndarray) -> torch.Tensor:
        latents = self._tensor(samples)
        return torch.cat([self.denoiser.decode(latents[i : i + DECODE_CHUNK]).float() for i in range(0, len(latents), DECODE_CHUNK)])

    def stack_images(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(images))

    def encode_png(self, images: torch.Tensor) -> list[bytes]:
        return encode_pngs(images.float().cpu().numpy())

    def decode_png(self, pngs: Sequence[bytes]) -> list[torch.Tensor]:
        """PNGs (as encode_png wrote them) back to [3, H, W] float32 images; ValueError names what is wrong."""
        return [torch.from_numpy(decode_png(png, self.spec.image_shape)).to(self.device) for png in pngs]


class TorchVerifierAdapter:
    def __init__(self, verifier: TorchVerifier, condition_kind: str) -> None:
        self.verifier = verifier
        self.spec = replace(verifier.spec, condition_kind=condition_kind)

    @torch.inference_mode()
    def score(self, samples: torch.Tensor, rows: Rows, probes: torch.Tensor | None) -> np.ndarray:
        return self.verifier.score(samples, rows.conditions, probes).float().cpu().numpy().astype(np.float64)
