"""FLUX.1-dev (Black Forest Labs, 2024) as a rectified-flow denoiser, loaded offline from a local folder with the
layout of the released repository:

    transformer/     config.json, diffusion_pytorch_model.safetensors (or its .index.json and shards)
    vae/             config.json, diffusion_pytorch_model.safetensors
    text_encoder/    config.json, model.safetensors                     (CLIP ViT-L/14 text tower: pooled)
    tokenizer/       vocab.json, merges.txt (+ tokenizer_config.json)
    text_encoder_2/  config.json, model.safetensors (or its .index.json and shards)   (T5 v1.1 XXL encoder)
    tokenizer_2/     tokenizer.json (+ tokenizer_config.json)
    scheduler/       scheduler_config.json

The transformer predicts the flow velocity v = n - x0 at x = (1 - sigma) x0 + sigma n, so x0 = x - sigma v.
FLUX.1-dev is guidance-distilled: a row's guidance scale goes into the transformer's guidance embedding, one
forward per row, no classifier-free doubling, and negative prompts have nothing to act on. A transformer whose
config has guidance_embeds false (FLUX.1-schnell) ignores guidance altogether; its spec's default is then 0.
Latents travel as [C, H/8, W/8] images; the 2x2 patch packing into tokens happens only inside x0.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..backend import ConfigError, ModelSpec
from .common import ByteBoundedCache, RowCondition, TorchDenoiser, require_files, tensor_bytes

# After .common, which turns the hub's offline switches on before these libraries read them.
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

WHAT = "flux"
# 30 Euler steps: the noise-search paper's FLUX.1-dev setting; 3.5: the released model card's guidance.
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 3.5
DEFAULT_RESOLUTION = 1024
DEFAULT_MAX_SEQUENCE_LENGTH = 512
DEFAULT_PROMPT_CACHE_BYTES = 512 * 2**20
# The smallest nonzero sigma a request may name (a full solve steps from its last sigma straight to 0). The
# finest timestep of the 1000-step grid the scheduler describes the training on is 1/1000, its sigma_min;
# a velocity asked for below it is one the network never learned.
SIGMA_MIN = 1e-3

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
REQUIRED = (
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors|transformer/diffusion_pytorch_model.safetensors.index.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors|text_encoder/model.safetensors.index.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors|text_encoder_2/model.safetensors.index.json",
    "tokenizer_2/tokenizer.json",
    "scheduler/scheduler_config.json",
)
# Files up to this size (configs, tokenizers, shard indexes) enter the identity by content; weights by name,
# size and modification time, since hashing tens of gigabytes would take minutes at every start.
HASHED_BYTES = 2**20


def schedule_shift(scheduler_config: dict, image_seq_len: int) -> float:
    """The s of the shifted schedule sigma = s*l / (1 + (s-1)*l) that the folder's FlowMatchEulerDiscreteScheduler
    applies: exp(mu) with diffusers' calculate_shift for this many image tokens when it shifts dynamically (as
    FLUX.1-dev does), else its static `shift`. Options the shifted schedule cannot express are refused."""
    unsupported = [key for key in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas",
                                   "use_beta_sigmas", "invert_sigmas", "stochastic_sampling")
                   if scheduler_config.get(key)]
    dynamic = bool(scheduler_config.get("use_dynamic_shifting"))
    if dynamic and scheduler_config.get("time_shift_type", "exponential") != "exponential":
        unsupported.append("time_shift_type")
    if unsupported:
        raise ConfigError(f"{WHAT}: scheduler/scheduler_config.json sets {', '.join(unsupported)}, which the "
                          "shifted schedule cannot follow; use the released FLUX scheduler config")
    if not dynamic:
        return float(scheduler_config.get("shift", 1.0))
    mu = calculate_shift(
        image_seq_len,
        scheduler_config.get("base_image_seq_len", 256),
        scheduler_config.get("max_image_seq_len", 4096),
        scheduler_config.get("base_shift", 0.5),
        scheduler_config.get("max_shift", 1.15),
    )
    return math.exp(mu)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C]: each 2x2 patch becomes one token, as the transformer reads them."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def image_ids(h: int, w: int) -> torch.Tensor:
    """Each token's rotary position (0, row, column) on the packed grid; text tokens all sit at (0, 0, 0)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def folder_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for component in COMPONENTS:
        for path in sorted(p for p in (root / component).rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0".encode())
            digest.update(path.read_bytes() if stat.st_size <= HASHED_BYTES else str(stat.st_mtime_ns).encode())
    return digest.hexdigest()[:16]


class FluxDenoiser(TorchDenoiser):
    def __init__(
        self,
        *,
        transformer: FluxTransformer2DModel,
        vae: AutoencoderKL,
        clip_tokenizer: CLIPTokenizer,
        clip: CLIPTextModel,
        t5_tokenizer: T5TokenizerFast,
        t5: T5EncoderModel,
        spec: ModelSpec,
        device: torch.device,
        dtype: torch.dtype,
        max_sequence_length: int,
        prompt_cache_bytes: int,
    ) -> None:
        self.transformer, self.vae, self.clip, self.t5 = transformer, vae, clip, t5
        self.clip_tokenizer, self.t5_tokenizer = clip_tokenizer, t5_tokenizer
        self.spec, self.device, self.dtype = spec, device, dtype
        self.max_sequence_length = max_sequence_length
        self.guided = bool(transformer.config.guidance_embeds)
        _, h, w = spec.latent_shape
        self._img_ids = image_ids(h, w).to(device, dtype)
        self._txt_ids = torch.zeros(max_sequence_length, 3, device=device, dtype=dtype)
        # One entry: the T5 token embeddings [L, D] and the pooled CLIP embedding [D'], both in the model dtype.
        self.prompts: ByteBoundedCache[str, tuple[torch.Tensor, torch.Tensor]] = ByteBoundedCache(
            prompt_cache_bytes, tensor_bytes)

    @torch.no_grad()
    def _encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        clip_ids = self.clip_tokenizer(
            [prompt], padding="max_length", max_length=self.clip_tokenizer.model_max_length, truncation=True,
            return_tensors="pt").input_ids
        pooled = self.clip(clip_ids.to(self.device), output_hidden_states=False).pooler_output
        t5_ids = self.t5_tokenizer(
            [prompt], padding="max_length", max_length=self.max_sequence_length, truncation=True,
            return_tensors="pt").input_ids
        tokens = self.t5(t5_ids.to(self.device), output_hidden_states=False)[0]
        return tokens[0].to(self.dtype), pooled[0].to(self.dtype)

    def prompt_embeddings(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prompts.get_or_make(prompt, lambda: self._encode(prompt))

    @torch.no_grad()
    def x0(self, x: torch.Tensor, sigma: float, conditions: Sequence[RowCondition]) -> torch.Tensor:
        if len(conditions) != x.shape[0]:
            raise ValueError(f"{WHAT}: {x.shape[0]} rows but {len(conditions)} conditions")
        # A row without a prompt gets the empty one: FLUX has no other unconditional input.
        tokens, pooled = zip(*(self.prompt_embeddings(c.prompt or "") for c in conditions))
        rows = x.shape[0]
        guidance = (torch.tensor([c.guidance for c in conditions], device=self.device, dtype=torch.float32)
                    if self.guided else None)
        # The transformer scales timestep and guidance by 1000 itself: it takes sigma in [0, 1] as is.
        velocity = self.transformer(
            hidden_states=pack(x.to(self.dtype)),
            timestep=torch.full((rows,), sigma, device=self.device, dtype=self.dtype),
            guidance=guidance,
            pooled_projections=torch.stack(pooled),
            encoder_hidden_states=torch.stack(tokens),
            txt_ids=self._txt_ids,
            img_ids=self._img_ids,
            return_dict=False,
        )[0]
        return x - sigma * unpack(velocity.float(), x.shape[2], x.shape[3])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.vae.config
        z = latents.to(self.vae.dtype) / config.scaling_factor + (config.shift_factor or 0.0)
        image = self.vae.decode(z, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0.0, 1.0)


def _from_pretrained(root: Path, component: str, load, **kwargs):
    """A component the folder has but that does not load (a missing shard, a bad config) fails at start-up,
    naming the component, instead of surfacing as a library traceback."""
    try:
        return load(str(root / component), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise ConfigError(f"{WHAT}: could not load {component}/ from {str(root)!r}: {error}") from None


def load(
    folder: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    *,
    resolution: int = DEFAULT_RESOLUTION,
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
    prompt_cache_bytes: int = DEFAULT_PROMPT_CACHE_BYTES,
) -> FluxDenoiser:
    """resolution: the square image side in pixels, a multiple of 16 (the VAE's 8 times the 2x2 packing);
    max_sequence_length: T5 tokens per prompt (512 for FLUX.1-dev, 256 for FLUX.1-schnell)."""
    root = require_files(WHAT, folder, REQUIRED)
    scheduler_config = json.loads((root / "scheduler/scheduler_config.json").read_text())
    transformer = _from_pretrained(root, "transformer", FluxTransformer2DModel.from_pretrained, dtype=dtype)
    vae = _from_pretrained(root, "vae", AutoencoderKL.from_pretrained, dtype=dtype)
    clip = _from_pretrained(root, "text_encoder", CLIPTextModel.from_pretrained, dtype=dtype)
    t5 = _from_pretrained(root, "text_encoder_2", T5EncoderModel.from_pretrained, dtype=dtype)
    clip_tokenizer = _from_pretrained(root, "tokenizer", CLIPTokenizer.from_pretrained)
    t5_tokenizer = _from_pretrained(root, "tokenizer_2", T5TokenizerFast.from_pretrained)

    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if resolution <= 0 or resolution % (2 * scale):
        raise ConfigError(f"{WHAT}: resolution {resolution} must be a positive multiple of {2 * scale} "
                          f"(the VAE's {scale}x downsampling times the transformer's 2x2 packing)")
    channels = transformer.config.in_channels // 4
    if channels != vae.config.latent_channels:
        raise ConfigError(f"{WHAT}: the transformer reads {channels}-channel latents but the VAE makes "
                          f"{vae.config.latent_channels}; transformer/ and vae/ are from different models")
    side = resolution // scale
    guided = bool(transformer.config.guidance_embeds)
    dtype_name = str(dtype).removeprefix("torch.")
    spec = ModelSpec(
        name=WHAT,
        latent_shape=(channels, side, side),
        sigma_min=SIGMA_MIN,
        sigma_max=1.0,
        rho=1.0,
        num_classes=0,
        default_solver="euler",
        default_steps=DEFAULT_STEPS,
        default_guidance_scale=DEFAULT_GUIDANCE if guided else 0.0,
        identity=f"{WHAT}-{resolution}px-{max_sequence_length}tok-{dtype_name}-{folder_digest(root)}",
        process="flow",
        schedule="shifted",
        schedule_shift=schedule_shift(scheduler_config, (side // 2) ** 2),
        takes_prompts=True,
        image_shape=(3, resolution, resolution),
    )
    for module in (transformer, vae, clip, t5):
        module.to(device).eval().requires_grad_(False)
    return FluxDenoiser(
        transformer=transformer, vae=vae, clip_tokenizer=clip_tokenizer, clip=clip, t5_tokenizer=t5_tokenizer,
        t5=t5, spec=spec, device=device, dtype=dtype, max_sequence_length=max_sequence_length,
        prompt_cache_bytes=prompt_cache_bytes)


# A few words the tiny tokenizers know whole; anything else falls back to letters (T5) or bytes (CLIP).
TINY_WORDS = ("a", "photo", "of", "cat", "dog", "red", "car")


def _tiny_clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """Byte-level BPE in CLIP's format: every byte alone and word-final ("</w>"), plus merges spelling out
    TINY_WORDS, written as the vocab.json and merges.txt the released tokenizer/ holds."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1], *parts[2:]]
    merges = list(dict.fromkeys(merges))
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet), *(a + b for a, b in merges),
                  "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def _tiny_t5_tokenizer() -> T5TokenizerFast:
    """A unigram model over SentencePiece pieces in T5's order (<pad>, </s>, <unk>, then pieces)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + word, -3.0) for word in TINY_WORDS]
    pieces += [(letter, -8.0) for letter in "abcdefghijklmnopqrstuvwxyz"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def save_tiny(folder: str | Path, seed: int = 0) -> None:
    """A random-weight FLUX with the released layout, small enough for a CPU test: 32-pixel images are 4x4x4
    latents, 4 tokens. The scheduler config is the released one. Written through FluxPipeline.save_pretrained,
    so diffusers' own pipeline loads the same folder."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    clip_tokenizer = _tiny_clip_tokenizer(root / "tokenizer")
    t5_tokenizer = _tiny_t5_tokenizer()
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=4, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    pipeline = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer, text_encoder_2=t5,
        tokenizer_2=t5_tokenizer, transformer=transformer)
    pipeline.save_pretrained(str(root), safe_serialization=True)
    # The released tokenizer/ has no tokenizer.json: loading must work from vocab.json and merges.txt alone.
    (root / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
