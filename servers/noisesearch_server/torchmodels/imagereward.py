"""ImageReward (Xu et al. 2023, "ImageReward: Learning and Evaluating Human Preferences for Text-to-Image
Generation"): a BLIP ViT encodes the image, BLIP's multimodal text encoder reads the prompt with
cross-attention to the image in every layer, and a small head maps the first ([CLS]) token to a reward,
standardised with the mean and deviation ImageReward reports.

The `image-reward` pip package does not import with current transformers, so the network is rebuilt here from
transformers' BLIP modules, and the RELEASED checkpoint loads into it through an explicit key map. A folder holds:

    ImageReward.pt      the released state dict: blip.visual_encoder.* (ViT-L/16 at 224), blip.text_encoder.*
                        (BERT-base, cross-attention in every layer) and mlp.layers.* (768->1024->128->64->16->1)
    med_config.json     the BERT configuration ImageReward ships beside it
    tokenizer/          a bert-base-uncased tokenizer folder (vocab.txt at least)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..backend import ConfigError, RequestError, VerifierSpec
from .common import ByteBoundedCache, RowCondition, TorchVerifier, require_files, tensor_bytes

CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
TOKENIZER = "tokenizer"

# ImageReward's own standardisation of the head's output (ImageReward.py: self.mean, self.std).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
# ImageReward tokenises with padding="max_length", truncation=True, max_length=35.
PROMPT_TOKENS = 35
# BLIP normalises with CLIP's constants.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# BLIP's ViT-B and ViT-L both use 64-wide heads; the checkpoint's shapes cannot say the head count otherwise.
VIT_HEAD_DIM = 64
# BLIP's ViT uses timm's LayerNorm(eps=1e-6), not transformers' BLIP default of 1e-5.
VIT_LAYER_NORM_EPS = 1e-6
HEAD_WIDTHS = (1024, 128, 64, 16, 1)

# In the released file but unused when scoring: BLIP's contrastive projections, and the position-id buffer
# that older transformers saved with every BERT.
UNUSED_RELEASED_KEYS = frozenset({
    "blip.vision_proj.weight",
    "blip.vision_proj.bias",
    "blip.text_proj.weight",
    "blip.text_proj.bias",
    "blip.text_encoder.embeddings.position_ids",
})

MED_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings",
)

_VIT_RENAMES = (
    (re.compile(r"^embeddings\.patch_embedding\."), "patch_embed.proj."),
    (re.compile(r"^embeddings\.class_embedding$"), "cls_token"),
    (re.compile(r"^embeddings\.position_embedding$"), "pos_embed"),
    (re.compile(r"^encoder\.layers\.(\d+)\.layer_norm1\."), r"blocks.\1.norm1."),
    (re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.qkv\."), r"blocks.\1.attn.qkv."),
    (re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.projection\."), r"blocks.\1.attn.proj."),
    (re.compile(r"^encoder\.layers\.(\d+)\.layer_norm2\."), r"blocks.\1.norm2."),
    (re.compile(r"^encoder\.layers\.(\d+)\.mlp\."), r"blocks.\1.mlp."),
    (re.compile(r"^post_layernorm\."), "norm."),
)


def released_key(module_key: str) -> str:
    """The released checkpoint's name for a parameter of ImageRewardNetwork. BLIP's text encoder (med.py) is
    what transformers' BlipTextModel was adapted from, so its names carry over; the ViT's are timm's."""
    if module_key.startswith("text."):
        return "blip.text_encoder." + module_key[len("text."):]
    if module_key.startswith("mlp."):
        return module_key
    if module_key.startswith("vision."):
        rest = module_key[len("vision."):]
        for pattern, replacement in _VIT_RENAMES:
            renamed, count = pattern.subn(replacement, rest)
            if count:
                return "blip.visual_encoder." + renamed
    raise KeyError(f"no released name for {module_key!r}")


class RewardHead(nn.Module):
    """ImageReward's MLP: linear layers with dropout between them and no activations (the ReLUs are commented
    out in the release); the Dropout slots keep the released indices mlp.layers.{0,2,4,6,7}."""

    def __init__(self, width: int) -> None:
        super().__init__()
        widths = (width, *HEAD_WIDTHS)
        self.layers = nn.Sequential(
            nn.Linear(widths[0], widths[1]), nn.Dropout(0.2),
            nn.Linear(widths[1], widths[2]), nn.Dropout(0.2),
            nn.Linear(widths[2], widths[3]), nn.Dropout(0.1),
            nn.Linear(widths[3], widths[4]),
            nn.Linear(widths[4], widths[5]),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class ImageRewardNetwork(nn.Module):
    def __init__(self, vision_config, text_config) -> None:
        from transformers import BlipTextModel, BlipVisionModel

        super().__init__()
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = RewardHead(text_config.hidden_size)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw head output [B] (before standardisation), in float32."""
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        # is_decoder=False: BLIP's bidirectional multimodal encoder; the cross-attention layers still run
        # because the config was built as a decoder (that is what creates them).
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            is_decoder=False,
        ).last_hidden_state
        return self.mlp(text[:, 0, :].float()).squeeze(-1)


def _configs(med: dict, vit_shapes: dict[str, torch.Size]):
    """transformers configs for the text encoder (from med_config.json) and the ViT (from the checkpoint's
    shapes: ImageReward fixes it to ViT-L/16 at 224 in code, not in any config file)."""
    from transformers import BlipTextConfig, BlipVisionConfig

    width, _, patch, _ = vit_shapes["blip.visual_encoder.patch_embed.proj.weight"]
    positions = vit_shapes["blip.visual_encoder.pos_embed"][1]
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1:
        raise ConfigError(f"{CHECKPOINT}: blip.visual_encoder.pos_embed has {positions} positions, not 1 + a square")
    depth = 1 + max(int(m.group(1)) for k in vit_shapes
                    if (m := re.match(r"blip\.visual_encoder\.blocks\.(\d+)\.", k)))
    vision = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=vit_shapes["blip.visual_encoder.blocks.0.mlp.fc1.weight"][0],
        num_hidden_layers=depth,
        num_attention_heads=max(1, width // VIT_HEAD_DIM),
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=VIT_LAYER_NORM_EPS,
    )
    text = BlipTextConfig(
        vocab_size=med["vocab_size"],
        hidden_size=med["hidden_size"],
        # ImageReward overrides med_config's encoder_width with the ViT's width.
        encoder_hidden_size=width,
        intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"],
        hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=med.get("pad_token_id", 0),
        bos_token_id=None,
        eos_token_id=None,
        sep_token_id=None,
        # Builds the cross-attention in every layer (BLIP's add_cross_attention); forward passes is_decoder=False.
        is_decoder=True,
    )
    return vision, text


def _read_med_config(path: Path) -> dict:
    try:
        med = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"imagereward: cannot read {str(path)!r}: {error}") from None
    missing = [key for key in MED_CONFIG_KEYS if key not in med]
    if missing:
        raise ConfigError(f"imagereward: {str(path)!r} lacks {', '.join(missing)}")
    return med


def _load_network(root: Path) -> ImageRewardNetwork:
    path = root / CHECKPOINT
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file fails in many ways; all mean "not this checkpoint"
        raise ConfigError(f"imagereward: cannot read {str(path)!r} as a state dict: {error}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    needed = ("blip.visual_encoder.patch_embed.proj.weight", "blip.visual_encoder.pos_embed",
              "blip.visual_encoder.blocks.0.mlp.fc1.weight")
    absent = [key for key in needed if key not in state]
    if absent:
        raise ConfigError(f"imagereward: {str(path)!r} is not an ImageReward state dict: missing {', '.join(absent)}")
    vision, text = _configs(_read_med_config(root / MED_CONFIG),
                            {k: v.shape for k, v in state.items() if k.startswith("blip.visual_encoder.")})
    network = ImageRewardNetwork(vision, text)
    names = {released_key(key): key for key in network.state_dict()}
    missing = sorted(set(names) - set(state))
    unexpected = sorted(set(state) - set(names) - UNUSED_RELEASED_KEYS)
    wrong = sorted(f"{k} {tuple(state[k].shape)} (want {tuple(network.state_dict()[names[k]].shape)})"
                   for k in set(names) & set(state) if state[k].shape != network.state_dict()[names[k]].shape)
    problems = [f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(unexpected)}" if unexpected else "",
                f"wrong shapes {', '.join(wrong)}" if wrong else ""]
    if any(problems):
        raise ConfigError(f"imagereward: {str(path)!r} does not match {MED_CONFIG}: "
                          + "; ".join(p for p in problems if p))
    network.load_state_dict({names[k]: state[k] for k in names}, strict=True)
    return network.eval().requires_grad_(False)


def preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """ImageReward's Resize(size, bicubic) + CenterCrop(size) + CLIP normalisation, in torch: the shorter side
    to `size` with antialiasing (as PIL resizes) and the longer truncated as torchvision's Resize does, the
    centre `size` x `size` with torchvision's rounding, clamped to [0, 1] as PIL's 8-bit result is."""
    height, width = images.shape[-2:]
    if height <= width:
        resized = (size, int(size * width / height))
    else:
        resized = (int(size * height / width), size)
    x = F.interpolate(images, size=resized, mode="bicubic", align_corners=False, antialias=True)
    top = int(round((resized[0] - size) / 2.0))
    left = int(round((resized[1] - size) / 2.0))
    x = x[..., top:top + size, left:left + size].clamp(0.0, 1.0)
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


class ImageRewardVerifier(TorchVerifier):
    def __init__(self, network: ImageRewardNetwork, tokenizer, device: torch.device, dtype: torch.dtype,
                 cache_bytes: int = 1 << 24) -> None:
        self.network = network.to(device=device, dtype=dtype)
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.image_size = network.vision.config.image_size
        self.spec = VerifierSpec(
            name="imagereward",
            kind="supervised",
            needs_condition=True,
            xpred_sigma=0.0,
            description="ImageReward (Xu et al. 2023): BLIP-based human-preference reward of an image for its "
                        "prompt, standardised (0 is ImageReward's mean reward, 1 its deviation)",
            condition_kind="prompt",
        )
        # Token ids are the only image-independent part: the text encoder attends to the image in every layer.
        self.tokens: ByteBoundedCache[str, tuple[torch.Tensor, torch.Tensor]] = ByteBoundedCache(
            cache_bytes, tensor_bytes)

    def _tokens(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        def make() -> tuple[torch.Tensor, torch.Tensor]:
            encoded = self.tokenizer(prompt, padding="max_length", truncation=True, max_length=PROMPT_TOKENS,
                                     return_tensors="pt")
            return encoded["input_ids"][0].to(self.device), encoded["attention_mask"][0].to(self.device)
        return self.tokens.get_or_make(prompt, make)

    def rewards(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Unstandardised head outputs [B], float32."""
        tokens = [self._tokens(prompt) for prompt in prompts]
        input_ids = torch.stack([ids for ids, _ in tokens])
        attention_mask = torch.stack([mask for _, mask in tokens])
        pixels = preprocess(images.to(self.device, torch.float32), self.image_size).to(self.dtype)
        with torch.inference_mode():
            return self.network(pixels, input_ids, attention_mask)

    def score(self, images: torch.Tensor, conditions: Sequence[RowCondition],
              probes: torch.Tensor | None) -> torch.Tensor:
        if len(conditions) != images.shape[0]:
            raise ValueError(f"imagereward: {images.shape[0]} images but {len(conditions)} conditions")
        unprompted = [i for i, c in enumerate(conditions) if c.prompt is None]
        if unprompted:
            raise RequestError("INVALID_ARGUMENT",
                               f"verifier 'imagereward' scores an image for its prompt; rows {unprompted} have none")
        return (self.rewards(images, [c.prompt for c in conditions]) - REWARD_MEAN) / REWARD_STD


def load_imagereward(folder: str | Path, device: torch.device, dtype: torch.dtype, **options) -> ImageRewardVerifier:
    """The released ImageReward-v1.0 from a local folder (ImageReward.pt, med_config.json, tokenizer/)."""
    root = require_files("imagereward", folder, (CHECKPOINT, MED_CONFIG, f"{TOKENIZER}/vocab.txt"))
    network = _load_network(root)
    return ImageRewardVerifier(network, _tokenizer(root / TOKENIZER / "vocab.txt"), device, dtype, **options)


def _tokenizer(vocab: Path):
    """bert-base-uncased's wordpieces, built from vocab.txt itself: transformers 5 loading a folder that has
    vocab.txt but no tokenizer.json silently maps every word to [UNK]. ImageReward's extra [DEC] and [ENC]
    tokens are never produced when scoring, so they need no entries."""
    from transformers import BertTokenizer
    from transformers.models.bert.tokenization_bert import load_vocab

    return BertTokenizer(vocab=load_vocab(str(vocab)), do_lower_case=True)


TINY_WORDS = ("a", "an", "the", "photo", "of", "cat", "dog", "red", "blue", "car", "tree", "on", "in", "painting",
              "house", "small", "big", "green", "sky", "##s", "##ing")
TINY_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TINY_MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 40,
    "model_type": "bert",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    # BLIP's tokenizer adds [DEC] and [ENC] after the wordpieces.
    "vocab_size": len(TINY_SPECIALS) + len(TINY_WORDS) + 2,
    "encoder_width": 128,
    "add_cross_attention": True,
}
# ViT width 128 (two 64-wide heads), 2 blocks, 16-pixel patches on a 32-pixel image.
TINY_VIT = {"width": 128, "mlp": 256, "depth": 2, "patch": 16, "image": 32}


def save_tiny_imagereward(folder: str | Path, seed: int = 0) -> None:
    """A random-weight ImageReward folder with the released layout and key names (including the unused
    projections and the position-id buffer the release carries), which load_imagereward reads."""
    root = Path(folder)
    (root / TOKENIZER).mkdir(parents=True, exist_ok=True)
    vocab = root / TOKENIZER / "vocab.txt"
    vocab.write_text("\n".join((*TINY_SPECIALS, *TINY_WORDS)) + "\n")
    _tokenizer(vocab).save_pretrained(str(root / TOKENIZER))
    (root / MED_CONFIG).write_text(json.dumps(TINY_MED_CONFIG, indent=2))

    width, patch, grid = TINY_VIT["width"], TINY_VIT["patch"], TINY_VIT["image"] // TINY_VIT["patch"]
    shapes = {
        "blip.visual_encoder.patch_embed.proj.weight": torch.Size((width, 3, patch, patch)),
        "blip.visual_encoder.pos_embed": torch.Size((1, 1 + grid * grid, width)),
        **{f"blip.visual_encoder.blocks.{i}.mlp.fc1.weight": torch.Size((TINY_VIT["mlp"], width))
           for i in range(TINY_VIT["depth"])},
    }
    with torch.device("meta"):  # only the names and shapes are needed; every tensor is drawn below
        network = ImageRewardNetwork(*_configs(TINY_MED_CONFIG, shapes))
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in network.state_dict().items():
        # The only 1-D weights are LayerNorm scales, kept near 1.
        noise = torch.randn(value.shape, generator=generator)
        layer_norm_scale = key.endswith(".weight") and value.ndim == 1
        state[released_key(key)] = 1.0 + 0.1 * noise if layer_norm_scale else 0.2 * noise
    text_width = TINY_MED_CONFIG["hidden_size"]
    state["blip.vision_proj.weight"] = 0.02 * torch.randn((256, width), generator=generator)
    state["blip.vision_proj.bias"] = torch.zeros(256)
    state["blip.text_proj.weight"] = 0.02 * torch.randn((256, text_width), generator=generator)
    state["blip.text_proj.bias"] = torch.zeros(256)
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(
        TINY_MED_CONFIG["max_position_embeddings"]).expand((1, -1)).clone()
    torch.save(state, root / CHECKPOINT)
