"""The engine speaks numpy float64 over flattened states; PyTorch models and verifiers speak tensors on a device.
These adapters are the one place that converts, so the engine's solvers, noise recipes, renoising, lineage cache
and batching run unchanged over any TorchDenoiser, and verifiers score decoded images without leaving the device."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from ..backend import ModelSpec, Rows
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
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        pngs = []
        for picture in pixels:
            buffer = io.BytesIO()
            Image.fromarray(picture, "RGB").save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        return pngs

    def decode_png(self, pngs: Sequence[bytes]) -> list[torch.Tensor]:
        """PNGs (as encode_png wrote them) back to [3, H, W] float32 images; ValueError names what is wrong."""
        want = tuple(self.spec.image_shape)
        images = []
        for png in pngs:
            try:
                picture = Image.open(io.BytesIO(png)).convert("RGB")
            except (OSError, Image.DecompressionBombError) as error:
                raise ValueError(f"not a readable PNG ({error})") from None
            image = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float() / 255
            if tuple(image.shape) != want:
                raise ValueError(f"got a {list(image.shape)} picture; want {list(want)}")
            images.append(image.to(self.device))
        return images


class TorchVerifierAdapter:
    def __init__(self, verifier: TorchVerifier, condition_kind: str) -> None:
        self.verifier = verifier
        self.spec = replace(verifier.spec, condition_kind=condition_kind)

    @torch.inference_mode()
    def score(self, samples: torch.Tensor, rows: Rows, probes: torch.Tensor | None) -> np.ndarray:
        return self.verifier.score(samples, rows.conditions, probes).float().cpu().numpy().astype(np.float64)
