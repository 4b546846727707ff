"""The CLIP-based verifiers of Ma et al. 2025 (arXiv 2501.09732), scoring decoded images [B, 3, H, W] in [0, 1]:

- clip-score:    CLIPScore (Hessel et al. 2021), 2.5 * max(cos(image, "A photo depicts " + prompt), 0).
- pickscore:     PickScore_v1 (a CLIPModel fine-tune), logit_scale.exp() * cos(image, prompt).
- clip-imagenet: CLIP zero-shot ImageNet classifier; the score is log p(class | image) over the folder's class list.
- aesthetic:     the LAION improved-aesthetic-predictor MLP over the L2-normalised CLIP ViT-L/14 image embedding.

Every folder is a transformers CLIP repository (config.json, model.safetensors, preprocessor_config.json and the
CLIP BPE tokenizer), loaded with from_pretrained(local_files_only=True). Images are preprocessed in torch on the
device, following the folder's preprocessor_config.json (TorchImageTransform, shared with the DINO verifiers)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..backend import ConfigError, VerifierSpec
from .common import ByteBoundedCache, RowCondition, TorchVerifier, require_files, tensor_bytes

# After .common, which makes the Hugging Face hub offline before transformers is first imported.
from transformers import (  # noqa: E402
    AutoConfig,
    AutoImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
)

MODEL_WEIGHTS = "model.safetensors|model.safetensors.index.json|pytorch_model.bin"
CLIP_FILES = (
    "config.json",
    MODEL_WEIGHTS,
    "preprocessor_config.json",
    "tokenizer.json|vocab.json",
    "tokenizer.json|merges.txt",
)
CLASS_LIST = "imagenet_classes.txt"
AESTHETIC_FILES = ("sac+logos+ava1-l14-linearMSE.pth", "aesthetic_mlp.safetensors")

# CLIP's ImageNet prompt ensemble (Radford et al. 2021, "Prompt_Engineering_for_ImageNet.ipynb"): 80 templates.
OPENAI_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)
TEMPLATE_SETS = {"openai-80": OPENAI_IMAGENET_TEMPLATES, "single": ("a photo of a {}.",)}

# Hessel et al.'s clipscore.py prefixes every candidate caption with this before encoding it.
HESSEL_PREFIX = "A photo depicts "
PROMPT_CACHE_BYTES = 16 << 20
TEXT_CHUNK = 256

# PIL resample codes in preprocessor_config.json -> torch interpolate modes.
RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}


class TorchImageTransform:
    """A folder's image processor (resize, center crop, normalize), done in torch on the device so decoded
    images never leave it. The resize follows PIL's, which the released models were trained behind: antialiased,
    width first then height, and clamped to [0, 1] after each pass as PIL's uint8 intermediate is; so it agrees
    with PIL to within one uint8 level even where bicubic overshoots, and equals the transformers processor's
    torch path wherever nothing overshoots."""

    def __init__(self, what: str, folder: Path) -> None:
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        if processor.resample not in RESAMPLE_MODES:
            raise ConfigError(
                f"{what}: {folder / 'preprocessor_config.json'} asks for resample={processor.resample}; "
                f"supported: {', '.join(f'{code} ({mode})' for code, mode in RESAMPLE_MODES.items())}"
            )
        self.mode = RESAMPLE_MODES[processor.resample]
        size = processor.size
        self.shortest_edge = size.shortest_edge if processor.do_resize else None
        self.resize_to = (size.height, size.width) if processor.do_resize and size.height else None
        if processor.do_resize and self.shortest_edge is None and self.resize_to is None:
            raise ConfigError(
                f"{what}: preprocessor_config.json size {dict(size)} has neither shortest_edge nor height/width"
            )
        crop = processor.crop_size
        self.crop = (crop.height, crop.width) if processor.do_center_crop else None
        self.mean = torch.tensor(processor.image_mean if processor.do_normalize else (0.0, 0.0, 0.0)).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std if processor.do_normalize else (1.0, 1.0, 1.0)).view(1, 3, 1, 1)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.resize_to is not None:
            return self.resize_to
        if self.shortest_edge is None:
            return height, width
        # transformers' get_resize_output_image_size(default_to_square=False): the long side is truncated.
        short, long = min(height, width), max(height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> normalized float32 pixel values [B, 3, h, w]."""
        x = images.float()
        height, width = self.output_size(x.shape[-2], x.shape[-1])
        if width != x.shape[-1]:
            x = F.interpolate(x, size=(x.shape[-2], width), mode=self.mode, antialias=True).clamp(0.0, 1.0)
        if height != x.shape[-2]:
            x = F.interpolate(x, size=(height, width), mode=self.mode, antialias=True).clamp(0.0, 1.0)
        if self.crop is not None:
            x = center_crop(x, *self.crop)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """transformers' center crop: offsets rounded down, zero padding when the image is smaller than the crop."""
    h, w = x.shape[-2:]
    if height > h or width > w:
        pad_h, pad_w = max(height - h, 0), max(width - w, 0)
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        h, w = x.shape[-2:]
    top, left = int((h - height) / 2.0), int((w - width) / 2.0)
    return x[..., top : top + height, left : left + width]


def load_pretrained(what: str, model_class, root: Path, device: torch.device, dtype: torch.dtype):
    """from_pretrained offline, with a folder that is not this kind of model said as a ConfigError (transformers
    itself only warns, then fills the mismatched model with random weights)."""
    try:
        model_type = AutoConfig.from_pretrained(str(root), local_files_only=True).model_type
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"{what}: cannot read {str(root / 'config.json')!r}: {error}") from None
    wanted = model_class.config_class.model_type
    if model_type != wanted:
        raise ConfigError(
            f"{what}: {str(root)!r} holds a {model_type!r} model; want a {wanted!r} one ({model_class.__name__})"
        )
    try:
        model = model_class.from_pretrained(str(root), local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"{what}: cannot load {model_class.__name__} from {str(root)!r}: {error}") from None
    return model.to(device).eval()


def row_prompt(verifier: str, row: int, condition: RowCondition) -> str:
    if condition.prompt is None:
        raise ValueError(f"{verifier}: row {row} has no prompt; this verifier scores an image against its prompt")
    return condition.prompt


def row_class(verifier: str, row: int, condition: RowCondition, num_classes: int) -> int:
    label = condition.class_label
    if label is None:
        raise ValueError(f"{verifier}: row {row} has no class label; this verifier scores log p(class | image)")
    if not 0 <= label < num_classes:
        raise ValueError(f"{verifier}: row {row} has class {label}, outside the verifier's {num_classes} classes")
    return label


class ClipEncoder:
    """One CLIP folder: unit-norm image and text embeddings (float32), whatever dtype the model runs in."""

    def __init__(self, what: str, folder: str | Path, device: torch.device, dtype: torch.dtype,
                 extra_files: Sequence[str] = ()) -> None:
        self.root = require_files(what, folder, (*CLIP_FILES, *extra_files))
        self.model: CLIPModel = load_pretrained(what, CLIPModel, self.root, device, dtype)
        self.tokenizer = CLIPTokenizer.from_pretrained(str(self.root), local_files_only=True)
        self.transform = TorchImageTransform(what, self.root)
        self.max_length = self.model.config.text_config.max_position_embeddings
        self.device = device
        self.dtype = dtype

    @property
    def embed_dim(self) -> int:
        return self.model.config.projection_dim

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.transform(images.to(self.device)).to(self.dtype)
        features = self.model.get_image_features(pixel_values=pixels).pooler_output
        return F.normalize(features.float(), dim=-1)

    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        # Padding to the longest text of a chunk is enough: CLIP's text tower is causal and pools at the end
        # token, so the padding after it never changes a text's embedding (the tests pad to 77 and agree).
        chunks = []
        for start in range(0, len(texts), TEXT_CHUNK):
            tokens = self.tokenizer(list(texts[start : start + TEXT_CHUNK]), padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt").to(self.device)
            features = self.model.get_text_features(**tokens).pooler_output
            chunks.append(F.normalize(features.float(), dim=-1))
        return torch.cat(chunks)


class PromptVerifier(TorchVerifier):
    """A score from the cosine between each image and its row's prompt; prompt embeddings are cached."""

    def __init__(self, spec: VerifierSpec, clip: ClipEncoder, prefix: str,
                 from_cosine: Callable[[torch.Tensor], torch.Tensor], cache_bytes: int) -> None:
        self.spec = spec
        self.device = clip.device
        self.clip = clip
        self.prefix = prefix
        self.from_cosine = from_cosine
        self.prompts: ByteBoundedCache[str, torch.Tensor] = ByteBoundedCache(cache_bytes, tensor_bytes)

    def prompt_embed(self, prompt: str) -> torch.Tensor:
        return self.prompts.get_or_make(prompt, lambda: self.clip.text_embeds([self.prefix + prompt])[0])

    @torch.inference_mode()
    def score(
        self, images: torch.Tensor, conditions: Sequence[RowCondition], probes: torch.Tensor | None
    ) -> torch.Tensor:
        prompts = [row_prompt(self.spec.name, row, condition) for row, condition in enumerate(conditions)]
        texts = torch.stack([self.prompt_embed(prompt) for prompt in prompts])
        cosine = (self.clip.image_embeds(images) * texts).sum(dim=-1)
        return self.from_cosine(cosine)


def load_clip_score(folder: str | Path, device: torch.device, dtype: torch.dtype, *,
                    caption_prefix: str = HESSEL_PREFIX, cache_bytes: int = PROMPT_CACHE_BYTES) -> PromptVerifier:
    """CLIPScore with w = 2.5 (Hessel et al. use CLIP ViT-B/32; Ma et al.'s text-to-image runs use a CLIP
    folder of the user's choice, e.g. openai/clip-vit-large-patch14)."""
    spec = VerifierSpec(
        name="clip-score",
        kind="supervised",
        needs_condition=True,
        xpred_sigma=0.0,
        description=f"CLIPScore: 2.5 * max(cos(CLIP image, CLIP text of {caption_prefix!r} + prompt), 0)",
    )
    clip = ClipEncoder("clip-score", folder, device, dtype)
    return PromptVerifier(spec, clip, caption_prefix, lambda cosine: 2.5 * cosine.clamp(min=0.0), cache_bytes)


def load_pickscore(folder: str | Path, device: torch.device, dtype: torch.dtype, *,
                   cache_bytes: int = PROMPT_CACHE_BYTES) -> PromptVerifier:
    """PickScore_v1 (yuvalkirstain/PickScore_v1); that repository holds the model only, so its folder also
    needs the tokenizer and preprocessor_config.json of laion/CLIP-ViT-H-14-laion2B-s32B-b79K, as its README loads."""
    spec = VerifierSpec(
        name="pickscore",
        kind="supervised",
        needs_condition=True,
        xpred_sigma=0.0,
        description="PickScore: logit_scale.exp() * cos(image, prompt) under the PickScore_v1 CLIP fine-tune",
    )
    clip = ClipEncoder("pickscore", folder, device, dtype)
    scale = clip.model.logit_scale.detach().float().exp()
    return PromptVerifier(spec, clip, "", lambda cosine: scale * cosine, cache_bytes)


class ClipImageNet(TorchVerifier):
    def __init__(self, clip: ClipEncoder, class_names: Sequence[str], templates: str) -> None:
        self.spec = VerifierSpec(
            name="clip-imagenet",
            kind="supervised",
            needs_condition=True,
            xpred_sigma=0.0,
            description=f"log p(class | image) of CLIP's zero-shot classifier over {len(class_names)} classes "
            f"({templates} prompt templates averaged per class)",
        )
        self.device = clip.device
        self.clip = clip
        self.class_names = tuple(class_names)
        self.classes = class_embeddings(clip, class_names, TEMPLATE_SETS[templates])
        self.logit_scale = clip.model.logit_scale.detach().float().exp()

    @torch.inference_mode()
    def score(
        self, images: torch.Tensor, conditions: Sequence[RowCondition], probes: torch.Tensor | None
    ) -> torch.Tensor:
        labels = [row_class(self.spec.name, row, c, len(self.class_names)) for row, c in enumerate(conditions)]
        logits = self.logit_scale * self.clip.image_embeds(images) @ self.classes.T
        log_probs = logits.log_softmax(dim=-1)
        return log_probs[torch.arange(len(labels)), torch.tensor(labels, device=log_probs.device)]


@torch.inference_mode()
def class_embeddings(clip: ClipEncoder, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Radford et al.'s zero-shot weights: per class, the unit-norm mean of its unit-norm template embeddings."""
    texts = [template.format(name) for name in class_names for template in templates]
    embeds = clip.text_embeds(texts).view(len(class_names), len(templates), -1)
    return F.normalize(embeds.mean(dim=1), dim=-1)


def read_class_names(what: str, path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    if not names or any(not name for name in names):
        raise ConfigError(f"{what}: {path} must hold one class name per line, with no blank lines")
    return names


def load_clip_imagenet(folder: str | Path, device: torch.device, dtype: torch.dtype, *,
                       templates: str = "openai-80") -> ClipImageNet:
    """The class embeddings (classes x templates texts through the text tower) are computed here, once."""
    if templates not in TEMPLATE_SETS:
        raise ConfigError(f"clip-imagenet: templates {templates!r}; want one of {', '.join(TEMPLATE_SETS)}")
    clip = ClipEncoder("clip-imagenet", folder, device, dtype, extra_files=(CLASS_LIST,))
    return ClipImageNet(clip, read_class_names("clip-imagenet", clip.root / CLASS_LIST), templates)


class AestheticMLP(nn.Module):
    """christophschuhmann/improved-aesthetic-predictor's MLP, layer for layer, so its released state dict
    (layers.0/2/4/6/7) loads strictly. It has no activations: the released model is a stack of linear maps."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


def load_aesthetic_mlp(what: str, path: Path) -> AestheticMLP:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if "layers.0.weight" not in state:
        raise ConfigError(f"{what}: {path} is not an aesthetic-predictor state dict (no layers.0.weight); "
                          f"it has {', '.join(sorted(state)[:8])}")
    mlp = AestheticMLP(state["layers.0.weight"].shape[1])
    try:
        mlp.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ConfigError(f"{what}: {path} does not fit the aesthetic MLP: {error}") from None
    return mlp.eval()


class Aesthetic(TorchVerifier):
    def __init__(self, clip: ClipEncoder, mlp: AestheticMLP) -> None:
        self.spec = VerifierSpec(
            name="aesthetic",
            kind="supervised",
            needs_condition=False,
            xpred_sigma=0.0,
            description="LAION aesthetic score: the improved-aesthetic-predictor MLP over the unit-norm CLIP "
            "image embedding (about 1-10)",
        )
        self.device = clip.device
        self.clip = clip
        self.mlp = mlp.to(clip.device)

    @torch.inference_mode()
    def score(
        self, images: torch.Tensor, conditions: Sequence[RowCondition], probes: torch.Tensor | None
    ) -> torch.Tensor:
        return self.mlp(self.clip.image_embeds(images)).squeeze(-1)


def load_aesthetic(folder: str | Path, device: torch.device, dtype: torch.dtype) -> Aesthetic:
    """The released MLP was trained on openai/clip-vit-large-patch14 embeddings: pair it with that folder.
    The .pth is preferred over aesthetic_mlp.safetensors when both are present."""
    clip = ClipEncoder("aesthetic", folder, device, dtype, extra_files=("|".join(AESTHETIC_FILES),))
    path = next(clip.root / name for name in AESTHETIC_FILES if (clip.root / name).exists())
    mlp = load_aesthetic_mlp("aesthetic", path)
    if mlp.layers[0].in_features != clip.embed_dim:
        raise ConfigError(f"aesthetic: {path.name} takes {mlp.layers[0].in_features}-d embeddings but the CLIP model "
                          f"in {str(clip.root)!r} makes {clip.embed_dim}-d ones; the released MLP needs CLIP ViT-L/14")
    return Aesthetic(clip, mlp)


# --- Tiny random-weight folders, in the layout of a real CLIP repository -------------------------------------

TINY_CLASSES = ("tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray",
                "stingray", "rooster", "hen", "ostrich")
# Words the tiny BPE learns whole, so tokenization exercises real merges rather than bytes only.
TINY_WORDS = ("a", "photo", "of", "the", "depicts", "cat", "dog", "red", "shark", "tench", "goldfish", "hen")


def tiny_tokenizer_files(root: Path) -> int:
    """A CLIP BPE tokenizer written from scratch: vocab.json and merges.txt in CLIP's layout (byte symbols,
    byte symbols ending a word, merges, then the two special tokens), then tokenizer.json and
    tokenizer_config.json from the tokenizer itself, as in openai/clip-vit-*. Returns the vocabulary size."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        # Left to right: "p h", "ph o", ... "phot o</w>", each result a vocabulary entry.
        merged = word[0]
        for position, char in enumerate(word[1:], start=1):
            right = char + ("</w>" if position == len(word) - 1 else "")
            if (merged, right) not in merges:
                merges.append((merged, right))
                vocab.setdefault(merged + right, len(vocab))
            merged += right
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (root / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    CLIPTokenizer.from_pretrained(str(root), local_files_only=True).save_pretrained(str(root))
    return len(vocab)


def save_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """A CLIP repository with random weights: 32x32 images in 8x8 patches, 2-layer towers, 32-d embeddings."""
    root = Path(folder)
    vocab_size = tiny_tokenizer_files(root)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                         eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=32,
    )
    CLIPModel(config).save_pretrained(str(root))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(root))
    return root


def save_tiny_clip_score(folder: str | Path, seed: int = 0) -> None:
    save_tiny_clip(folder, seed)


def save_tiny_pickscore(folder: str | Path, seed: int = 0) -> None:
    save_tiny_clip(folder, seed)


def save_tiny_clip_imagenet(folder: str | Path, seed: int = 0) -> None:
    root = save_tiny_clip(folder, seed)
    (root / CLASS_LIST).write_text("".join(f"{name}\n" for name in TINY_CLASSES), encoding="utf-8")


def save_tiny_aesthetic(folder: str | Path, seed: int = 0) -> None:
    """The MLP goes under the released file name, saved the way the release was (a torch.save'd state dict)."""
    root = save_tiny_clip(folder, seed)
    torch.manual_seed(seed + 1)
    mlp = AestheticMLP(CLIPConfig.from_pretrained(str(root)).projection_dim)
    torch.save(mlp.state_dict(), root / AESTHETIC_FILES[0])
