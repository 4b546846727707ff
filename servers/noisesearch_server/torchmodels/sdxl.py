"""Stable Diffusion XL (and fine-tunes with its architecture, e.g. SDXL-DPO) as a VE denoiser over its latents.

The folder has the layout of stabilityai/stable-diffusion-xl-base-1.0: unet/, vae/, text_encoder/,
text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/ (and model_index.json, whose force_zeros_for_empty_prompt
is honoured). For SDXL-DPO, put the DPO unet/ into a copy of (or links to) that folder and load it with
name="sdxl-dpo". Conditioning is what StableDiffusionXLPipeline computes: the penultimate hidden states of both
CLIP text encoders concatenated, the pooled projection of the second, and the size/crop time ids."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..backend import ConfigError
from . import vp
from .common import require_files

SUBFOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
OPTIONS = ("name", "resolution")


def tokenizer_files(sub: str) -> list[str]:
    return [f"{sub}/vocab.json|{sub}/tokenizer.json", f"{sub}/merges.txt|{sub}/tokenizer.json"]


REQUIRED = [
    "unet/config.json", vp.weights("unet", "diffusion_pytorch_model"),
    "vae/config.json", vp.weights("vae", "diffusion_pytorch_model"),
    "text_encoder/config.json", vp.weights("text_encoder", "model"),
    "text_encoder_2/config.json", vp.weights("text_encoder_2", "model"),
    *tokenizer_files("tokenizer"), *tokenizer_files("tokenizer_2"),
    "scheduler/scheduler_config.json",
]


class SDXL(vp.VPEpsilonDenoiser):
    def __init__(self, root: Path, device: torch.device, dtype: torch.dtype, name: str, resolution: int | None):
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        what = f"{name} ({root})"
        self.unet = vp.load_network(what, UNet2DConditionModel, root, "unet", device, dtype)
        vae = vp.load_vae(what, root, device, dtype)
        self.text_encoder = vp.load_network(what, CLIPTextModel, root, "text_encoder", device, dtype)
        self.text_encoder_2 = vp.load_network(what, CLIPTextModelWithProjection, root, "text_encoder_2", device, dtype)
        self.tokenizer = vp.load_tokenizer(what, CLIPTokenizer, root, "tokenizer")
        self.tokenizer_2 = vp.load_tokenizer(what, CLIPTokenizer, root, "tokenizer_2")

        index = root / "model_index.json"
        # StableDiffusionXLPipeline's default: an absent negative prompt is zero embeddings, not the empty prompt.
        self.force_zeros = (bool(vp.read_json(index).get("force_zeros_for_empty_prompt", True)) if index.exists()
                            else True)
        sigmas = vp.scheduler_sigmas(root, what)

        config = self.unet.config
        scale = vp.vae_scale(vae)
        resolution = vp.check_resolution(what, resolution, config.sample_size * scale,
                                      scale * 2 ** (len(config.down_block_types) - 1))
        time_ids = [resolution, resolution, 0, 0, resolution, resolution]
        expected = self.unet.add_embedding.linear_1.in_features
        passed = config.addition_time_embed_dim * len(time_ids) + self.text_encoder_2.config.projection_dim
        if expected != passed:
            raise ConfigError(f"{what}: the unet expects added embeddings of {expected} values, the text encoders and "
                              f"time ids give {passed}; the folder's components do not belong together")
        self.time_ids = torch.tensor([time_ids], dtype=dtype, device=device)
        spec = vp.vp_spec(name, root, SUBFOLDERS, dtype, sigmas, config.in_channels, resolution, scale, 5.0,
                       tags=[f"zeros={self.force_zeros}"])
        super().__init__(spec, device, dtype, sigmas, vae)

    def embed(self, text: str, negative: bool) -> tuple[torch.Tensor, ...]:
        if negative and text == "" and self.force_zeros:
            hidden, pooled = self.embedding("", False)
            return torch.zeros_like(hidden), torch.zeros_like(pooled)
        hidden = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
        return torch.cat(hidden, dim=-1), out.text_embeds

    def eps(self, x_in: torch.Tensor, t: torch.Tensor, embeddings: Sequence[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        added = {"text_embeds": torch.cat([e[1] for e in embeddings]), "time_ids": self.time_ids.expand(len(x_in), -1)}
        return self.unet(x_in, t, encoder_hidden_states=torch.cat([e[0] for e in embeddings]),
                         added_cond_kwargs=added, return_dict=False)[0]


def load(folder: str | Path, device: torch.device, dtype: torch.dtype, **options: Any) -> SDXL:
    """Options: name ("sdxl"; e.g. "sdxl-dpo" for a fine-tune), resolution (pixels per side; default the
    unet's sample_size times the VAE's scale, 1024 for SDXL)."""
    vp.check_options("sdxl", options, OPTIONS)
    name = options.get("name", "sdxl")
    root = require_files(name, folder, REQUIRED)
    return SDXL(root, device, dtype, name, options.get("resolution"))


# A few merges, so that the tiny tokenizers' BPE really merges; every other word falls back to characters.
TINY_MERGES = [("c", "a"), ("ca", "t</w>"), ("p", "h"), ("ph", "o"), ("t", "o</w>"), ("pho", "to</w>"),
               ("o", "f</w>"), ("r", "e"), ("re", "d</w>")]


def write_clip_tokenizer(folder: Path, pad_token: str) -> int:
    """A CLIP BPE tokenizer as the real folders hold one (vocab.json, merges.txt, the two JSON configs):
    every byte as a character and as an end of word, the merges, then the start and end tokens.
    Returns the vocabulary size."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + [a + b for a, b in TINY_MERGES]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in TINY_MERGES))
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **specials}))
    return len(vocab)


def save_tiny(folder: str | Path, seed: int = 0) -> None:
    """A random-weight SDXL of a few hundred kB, saved by StableDiffusionXLPipeline.save_pretrained with the
    real folder's layout and scheduler config; 64 x 64 images (8 x 8 latents)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root = Path(folder)
    scratch = root / "_tokenizers"
    vocab_size = write_clip_tokenizer(scratch / "tokenizer", "<|endoftext|>")
    write_clip_tokenizer(scratch / "tokenizer_2", "!")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64, norm_num_groups=1,
    )
    vae = vp.tiny_vae()
    text_config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=1,
        projection_dim=32, hidden_act="gelu",
    )
    # SDXL's own scheduler config: "leading" spacing, which the denoiser ignores (it only reads the betas).
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", timestep_spacing="leading", steps_offset=1, interpolation_type="linear",
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_config), text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=CLIPTokenizer.from_pretrained(scratch / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(scratch / "tokenizer_2"),
        unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    vp.save_with_tokenizers(pipeline, root, scratch)
