"""PixArt-Sigma as a VE denoiser over its latents.

The folder has the layout of PixArt-alpha/PixArt-Sigma-XL-2-1024-MS: transformer/, vae/, text_encoder/ (T5),
tokenizer/, scheduler/. Conditioning is what PixArtSigmaPipeline computes with clean_caption=False: the prompt
lower-cased and stripped, T5 embeddings of 300 tokens with their attention mask. The transformer predicts epsilon
and a learned variance; only epsilon is used. Resolution binning is off: images are resolution x resolution."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..backend import ConfigError
from . import vp
from .common import require_files

NAME = "pixart-sigma"
SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
OPTIONS = ("resolution",)
# PixArtSigmaPipeline's max_sequence_length: the length T5 embeddings are padded (and truncated) to.
MAX_SEQUENCE_LENGTH = 300
REQUIRED = [
    "transformer/config.json", vp.weights("transformer", "diffusion_pytorch_model"),
    "vae/config.json", vp.weights("vae", "diffusion_pytorch_model"),
    "text_encoder/config.json", vp.weights("text_encoder", "model"),
    "tokenizer/spiece.model|tokenizer/tokenizer.json",
    "scheduler/scheduler_config.json",
]


class PixArtSigma(vp.VPEpsilonDenoiser):
    def __init__(self, root: Path, device: torch.device, dtype: torch.dtype, resolution: int | None):
        from diffusers import PixArtTransformer2DModel
        from transformers import T5EncoderModel, T5Tokenizer

        what = f"{NAME} ({root})"
        self.transformer = vp.load_network(what, PixArtTransformer2DModel, root, "transformer", device, dtype)
        vae = vp.load_vae(what, root, device, dtype)
        self.text_encoder = vp.load_network(what, T5EncoderModel, root, "text_encoder", device, dtype)
        self.tokenizer = vp.load_tokenizer(what, T5Tokenizer, root, "tokenizer")
        if self.transformer.use_additional_conditions:
            raise ConfigError(f"{what}: the transformer takes resolution and aspect-ratio conditions (PixArt-Alpha); "
                              "this loader serves PixArt-Sigma")
        config = self.transformer.config
        sigmas = vp.scheduler_sigmas(root, what)
        scale = vp.vae_scale(vae)
        resolution = vp.check_resolution(what, resolution, config.sample_size * scale, scale * config.patch_size)
        self.learned_sigma = config.out_channels // 2 == config.in_channels
        spec = vp.vp_spec(NAME, root, SUBFOLDERS, dtype, sigmas, config.in_channels, resolution, scale, 4.5)
        super().__init__(spec, device, dtype, sigmas, vae)

    def embed(self, text: str, negative: bool) -> tuple[torch.Tensor, ...]:
        tokens = self.tokenizer(text.lower().strip(), padding="max_length", max_length=MAX_SEQUENCE_LENGTH,
                                truncation=True, add_special_tokens=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        return self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0], mask

    def eps(self, x_in: torch.Tensor, t: torch.Tensor, embeddings: Sequence[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        out = self.transformer(
            x_in,
            encoder_hidden_states=torch.cat([e[0] for e in embeddings]),
            encoder_attention_mask=torch.cat([e[1] for e in embeddings]),
            timestep=t,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]
        return out.chunk(2, dim=1)[0] if self.learned_sigma else out


def load(folder: str | Path, device: torch.device, dtype: torch.dtype, **options: Any) -> PixArtSigma:
    """Options: resolution (pixels per side; default the transformer's sample_size times the VAE's scale,
    1024 for PixArt-Sigma-XL-2-1024-MS)."""
    vp.check_options(NAME, options, OPTIONS)
    root = require_files(NAME, folder, REQUIRED)
    return PixArtSigma(root, device, dtype, options.get("resolution"))


# The tiny T5 tokenizer's corpus: sentencepiece learns its unigram pieces from these.
TINY_CORPUS = ["a photo of a red cat", "a blurry photo of a dog", "an astronaut riding a horse on the moon",
               "low quality, bad anatomy", "the quick brown fox jumps over the lazy dog"]


def write_t5_tokenizer(folder: Path) -> int:
    """A T5 sentencepiece unigram tokenizer as the released folder holds one (spiece.model and its configs),
    learned from TINY_CORPUS with T5's ids (pad 0, eos 1, unk 2, no bos). Returns the vocabulary size."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TINY_CORPUS), model_writer=model, vocab_size=48, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "extra_ids": 0, **specials}))
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    return processor.get_piece_size()


def save_tiny(folder: str | Path, seed: int = 0) -> None:
    """A random-weight PixArt-Sigma of a few hundred kB, saved by PixArtSigmaPipeline.save_pretrained with the
    real folder's layout and scheduler config; 64 x 64 images (8 x 8 latents)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    root = Path(folder)
    scratch = root / "_tokenizers"
    vocab_size = write_t5_tokenizer(scratch / "tokenizer")
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, out_channels=8, cross_attention_dim=24, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        use_additional_conditions=False,
    )
    vae = vp.tiny_vae()
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
    ))
    # PixArt-Sigma's own scheduler config (DPM-Solver++ over the linear DDPM betas); the denoiser reads the betas.
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon",
    )
    pipeline = PixArtSigmaPipeline(tokenizer=T5Tokenizer.from_pretrained(scratch / "tokenizer"),
                                   text_encoder=text_encoder, vae=vae, transformer=transformer,
                                   scheduler=scheduler)
    vp.save_with_tokenizers(pipeline, root, scratch)
