"""Epsilon-prediction VP models (SDXL, PixArt) as k-diffusion VE denoisers, as k-diffusion's external.py
DiscreteEpsDDPMDenoiser does: a VP state at timestep t, sqrt(alphabar_t) * (x0 + sigma_t * n), is the VE state
x = x0 + sigma_t * n scaled by c_in = 1 / sqrt(sigma^2 + 1); sigma maps to a continuous timestep by
interpolating log-sigma over the trained schedule (diffusers' EulerDiscreteScheduler._sigma_to_t); the network's
epsilon gives x0 = x - sigma * eps. Classifier-free guidance doubles the batch inside one forward call."""

from __future__ import annotations

import hashlib
import json
import shutil
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backend import ConfigError, ModelSpec
from .common import ByteBoundedCache, RowCondition, TorchDenoiser, tensor_bytes

# Prompt embeddings kept per model: ~100 PixArt (T5, 300 x 4096 bf16) prompts, ~800 SDXL ones.
PROMPT_CACHE_BYTES = 256 * 2**20
# Images decoded per VAE call: a 1024 x 1024 decode takes several GB of activations per image.
DECODE_CHUNK = 4
# Bytes read from each end of every weight file for the identity: a fine-tune changes them, a re-save does not.
FINGERPRINT_BYTES = 2**20


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read it as JSON ({error})") from None


def trained_sigmas(scheduler_config: dict[str, Any], where: str) -> np.ndarray:
    """sigma_t = sqrt((1 - alphabar_t) / alphabar_t) for t = 0 .. T-1, computed in float32 from the betas as
    diffusers' schedulers compute them, so that timesteps and sigmas agree with its pipelines bit for bit."""
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ConfigError(f"{where}: prediction_type is {prediction!r}; this wrapper serves epsilon-prediction models")
    if scheduler_config.get("rescale_betas_zero_snr", False):
        raise ConfigError(f"{where}: rescale_betas_zero_snr models reach infinite sigma; not supported")
    steps = int(scheduler_config.get("num_train_timesteps", 1000))
    start, end = float(scheduler_config.get("beta_start", 0.0001)), float(scheduler_config.get("beta_end", 0.02))
    kind = scheduler_config.get("beta_schedule", "linear")
    if scheduler_config.get("trained_betas") is not None:
        betas = torch.tensor(scheduler_config["trained_betas"], dtype=torch.float32)
    elif kind == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float32)
    elif kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float32) ** 2
    else:
        raise ConfigError(f"{where}: beta_schedule {kind!r} is not supported; want linear or scaled_linear")
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy().astype(np.float64)


def sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    """The continuous timestep of sigma: linear in log-sigma between the two trained timesteps around it,
    clamped to [0, T-1] (diffusers' EulerDiscreteScheduler._sigma_to_t for one sigma)."""
    log_sigma = np.log(max(sigma, 1e-10))
    low = int(np.clip(np.count_nonzero(log_sigma - log_sigmas >= 0) - 1, 0, len(log_sigmas) - 2))
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0.0, 1.0)
    return float((1 - w) * low + w * (low + 1))


def folder_fingerprint(root: Path, subfolders: Sequence[str]) -> str:
    """A short hash of every file under the subfolders: its path, size and first and last FINGERPRINT_BYTES
    (hashing whole multi-GB checkpoints would add seconds to every start)."""
    digest = hashlib.blake2b(digest_size=8)
    for sub in subfolders:
        for path in sorted(p for p in (root / sub).rglob("*") if p.is_file()):
            size = path.stat().st_size
            digest.update(f"{path.relative_to(root)}:{size}\n".encode())
            with path.open("rb") as handle:
                digest.update(handle.read(FINGERPRINT_BYTES))
                if size > FINGERPRINT_BYTES:
                    handle.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
                    digest.update(handle.read())
    return digest.hexdigest()


def scheduler_sigmas(root: Path, what: str) -> np.ndarray:
    return trained_sigmas(read_json(root / "scheduler" / "scheduler_config.json"), f"{what} scheduler")


def vae_scale(vae) -> int:
    """Pixels per latent side: the VAE halves the side at every block but the last."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vp_spec(
    name: str,
    root: Path,
    subfolders: Sequence[str],
    dtype: torch.dtype,
    sigmas: np.ndarray,
    channels: int,
    resolution: int,
    scale: int,
    default_guidance_scale: float,
    tags: Sequence[str] = (),
) -> ModelSpec:
    """The spec of a resolution x resolution model with `channels` latent channels; its identity names the
    resolution, the dtype, the tags (what else changes its outputs) and the weights' fingerprint."""
    latent = resolution // scale
    identity = ":".join([name, f"{resolution}px", str(dtype).removeprefix("torch."), *tags,
                         folder_fingerprint(root, subfolders)])
    return ModelSpec(
        name=name,
        latent_shape=(channels, latent, latent),
        sigma_min=float(sigmas[0]),
        sigma_max=float(sigmas[-1]),
        rho=7.0,
        num_classes=0,
        default_solver="euler",
        default_steps=30,
        default_guidance_scale=default_guidance_scale,
        identity=identity,
        process="ve",
        schedule="karras",
        takes_prompts=True,
        image_shape=(3, resolution, resolution),
    )


class VPEpsilonDenoiser(TorchDenoiser):
    """The VE denoiser over an epsilon network; a subclass embeds prompts and runs its network."""

    def __init__(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype, sigmas: np.ndarray, vae) -> None:
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.log_sigmas = np.log(sigmas)
        self.vae = vae
        self.prompts: ByteBoundedCache[tuple[str, bool], tuple[torch.Tensor, ...]] = ByteBoundedCache(
            PROMPT_CACHE_BYTES, tensor_bytes
        )

    @abstractmethod
    def embed(self, text: str, negative: bool) -> tuple[torch.Tensor, ...]:
        """One prompt's conditioning, each tensor with a leading batch dimension of 1; `negative` when it is
        the unconditional branch (SDXL maps an empty negative prompt to zeros)."""

    @abstractmethod
    def eps(self, x_in: torch.Tensor, t: torch.Tensor, embeddings: Sequence[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """The network's epsilon for scaled inputs x_in [N, ...] (self.dtype) at timesteps t [N] (float32),
        row i conditioned on embeddings[i]."""

    def embedding(self, text: str, negative: bool) -> tuple[torch.Tensor, ...]:
        return self.prompts.get_or_make((text, negative), lambda: self.embed(text, negative))

    def timestep(self, sigma: float) -> float:
        return sigma_to_t(sigma, self.log_sigmas)

    @torch.inference_mode()
    def x0(self, x: torch.Tensor, sigma: float, conditions: Sequence[RowCondition]) -> torch.Tensor:
        # Guidance 0 needs only the unconditional branch, guidance 1 only the conditional one.
        uncond_rows = [i for i, c in enumerate(conditions) if c.guidance != 1.0]
        cond_rows = [i for i, c in enumerate(conditions) if c.guidance != 0.0]
        embeddings = [self.embedding(conditions[i].negative_prompt, True) for i in uncond_rows]
        embeddings += [self.embedding(conditions[i].prompt or "", False) for i in cond_rows]
        rows = torch.tensor(uncond_rows + cond_rows, device=x.device, dtype=torch.long)
        x_rows = x.float().index_select(0, rows)
        x_in = (x_rows / (sigma**2 + 1.0) ** 0.5).to(self.dtype)
        t = torch.full((len(rows),), self.timestep(sigma), dtype=torch.float32, device=self.device)
        predicted = x_rows - sigma * self.eps(x_in, t, embeddings).float()
        uncond = dict(zip(uncond_rows, predicted[: len(uncond_rows)]))
        cond = dict(zip(cond_rows, predicted[len(uncond_rows) :]))
        out = []
        for i, c in enumerate(conditions):
            if c.guidance == 0.0:
                out.append(uncond[i])
            elif c.guidance == 1.0:
                out.append(cond[i])
            else:
                out.append(uncond[i] + c.guidance * (cond[i] - uncond[i]))
        return torch.stack(out)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.vae.config
        vae_dtype = next(self.vae.parameters()).dtype
        latents = latents.float()
        # As diffusers' pipelines: latents_mean/std when the VAE names them, else only the scaling factor.
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            shape = (1, -1) + (1,) * (latents.ndim - 2)
            mean = torch.tensor(config.latents_mean, device=latents.device).view(shape)
            std = torch.tensor(config.latents_std, device=latents.device).view(shape)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        images = [
            self.vae.decode(chunk.to(vae_dtype)).sample.float() for chunk in latents.split(DECODE_CHUNK)
        ]
        return (torch.cat(images) / 2 + 0.5).clamp(0.0, 1.0)


def vae_dtype(vae_config: Any, dtype: torch.dtype) -> torch.dtype:
    """The SDXL VAE overflows in float16 (its config says force_upcast): diffusers decodes it in float32.
    `vae_config` is the folder's config (a dict, from load_config) or a loaded VAE's (attributes)."""
    if isinstance(vae_config, dict):
        upcast = vae_config.get("force_upcast", False)
    else:
        upcast = getattr(vae_config, "force_upcast", False)
    return torch.float32 if dtype == torch.float16 and upcast else dtype


def check_options(what: str, options: dict[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{what}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")


def check_resolution(what: str, resolution: Any, default: int, multiple: int) -> int:
    """The resolution option, `default` when it is not given."""
    resolution = default if resolution is None else resolution
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution <= 0 or resolution % multiple:
        raise ConfigError(f"{what}: resolution {resolution!r} must be a positive multiple of {multiple}")
    return resolution


def weights(sub: str, base: str) -> str:
    """require_files alternatives for one component's weights: whole or sharded, fp32 or the fp16 variant."""
    names = (f"{base}.safetensors", f"{base}.safetensors.index.json", f"{base}.bin", f"{base}.fp16.safetensors",
             f"{base}.safetensors.index.fp16.json")
    return "|".join(f"{sub}/{name}" for name in names)


def variant(root: Path, sub: str, base: str) -> str | None:
    """"fp16" when the folder has only the fp16 variant of a component (a common partial download)."""
    plain = (f"{base}.safetensors", f"{base}.safetensors.index.json", f"{base}.bin")
    return None if any((root / sub / name).exists() for name in plain) else "fp16"


def load_component(what: str, make):
    try:
        return make()
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"{what}: cannot load it: {error}") from None


def load_network(what: str, cls, root: Path, sub: str, device: torch.device, dtype: torch.dtype):
    """One network of the folder, from root/sub, on the device for inference. diffusers' model classes name
    their weights diffusion_pytorch_model.* and their dtype argument torch_dtype; transformers' model.* and dtype."""
    from diffusers import ModelMixin

    base, dtype_arg = ("diffusion_pytorch_model", "torch_dtype") if issubclass(cls, ModelMixin) else ("model", "dtype")
    network = load_component(f"{what} {sub}", lambda: cls.from_pretrained(
        root, subfolder=sub, variant=variant(root, sub, base), local_files_only=True, **{dtype_arg: dtype}))
    return network.to(device).eval().requires_grad_(False)


def load_vae(what: str, root: Path, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    config = AutoencoderKL.load_config(root, subfolder="vae", local_files_only=True)
    return load_network(what, AutoencoderKL, root, "vae", device, vae_dtype(config, dtype))


def load_tokenizer(what: str, cls, root: Path, sub: str):
    return load_component(f"{what} {sub}", lambda: cls.from_pretrained(root, subfolder=sub, local_files_only=True))


def tiny_vae():
    """The tiny random-weight VAE of the save_tiny folders: SDXL's latent scaling, 8 pixels per latent side."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        sample_size=64, scaling_factor=0.13025, force_upcast=True,
    )


def save_with_tokenizers(pipeline, root: Path, scratch: Path) -> None:
    """pipeline.save_pretrained(root), then each tokenizer folder replaced by its namesake in scratch:
    save_pretrained writes tokenizer.json, the released folders hold the slow tokenizers' files; load those."""
    pipeline.save_pretrained(root)
    for folder in sorted(scratch.iterdir()):
        shutil.rmtree(root / folder.name)
        shutil.move(folder, root / folder.name)
    scratch.rmdir()
