"""The DINOv2-based verifiers of Ma et al. 2025 (arXiv 2501.09732), scoring decoded images [B, 3, H, W] in [0, 1]:

- dino-imagenet: DINOv2's released ImageNet linear classifier; the score is log p(class | image).
- selfsup:       the paper's self-supervised verifier, the cosine similarity between the DINOv2 CLS features of
                 the decoded x-prediction taken at sigma <= xpred_sigma and of the final sample.

Every folder is a transformers Dinov2Model repository (config.json, model.safetensors, preprocessor_config.json,
e.g. facebook/dinov2-large), loaded with from_pretrained(local_files_only=True); dino-imagenet adds a head file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn import functional as F

from ..backend import ConfigError, VerifierSpec
from .clip_verifiers import MODEL_WEIGHTS, TorchImageTransform, load_pretrained, row_class
from .common import RowCondition, TorchVerifier, require_files

# After .common, which makes the Hugging Face hub offline before transformers is first imported.
from transformers import BitImageProcessor, Dinov2Config, Dinov2Model  # noqa: E402

DINO_FILES = ("config.json", MODEL_WEIGHTS, "preprocessor_config.json")
# The one-layer heads torch.hub's dinov2_vit*14_lc(layers=1) downloads, then a safetensors form of the same.
HEAD_FILES = (
    "linear_head.safetensors",
    "dinov2_vits14_linear_head.pth",
    "dinov2_vitb14_linear_head.pth",
    "dinov2_vitl14_linear_head.pth",
    "dinov2_vitg14_linear_head.pth",
)


class DinoEncoder:
    """One Dinov2Model folder: the final (layer-normed) token sequence, [CLS, patches...], as float32."""

    def __init__(self, what: str, folder: str | Path, device: torch.device, dtype: torch.dtype,
                 extra_files: Sequence[str] = ()) -> None:
        self.root = require_files(what, folder, (*DINO_FILES, *extra_files))
        # A plain DINOv2 (e.g. facebook/dinov2-large); the register variants are another model type.
        self.model: Dinov2Model = load_pretrained(what, Dinov2Model, self.root, device, dtype)
        self.transform = TorchImageTransform(what, self.root)
        self.hidden_size = self.model.config.hidden_size
        self.device = device
        self.dtype = dtype

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.transform(images.to(self.device)).to(self.dtype)
        return self.model(pixel_values=pixels).last_hidden_state.float()


def load_linear_head(what: str, path: Path, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [classes, in_features], bias [classes]) of an nn.Linear state dict, checked against the backbone."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if "weight" not in state or "bias" not in state:
        raise ConfigError(f"{what}: {path} must be an nn.Linear state dict with 'weight' and 'bias'; "
                          f"it has {', '.join(sorted(state)[:8])}")
    weight, bias = state["weight"].float(), state["bias"].float()
    if weight.ndim != 2 or bias.shape != weight.shape[:1] or weight.shape[1] != in_features:
        raise ConfigError(
            f"{what}: {path.name} has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}; the one-layer "
            f"linear head over concat(CLS, mean patch) of this backbone needs weight [classes, {in_features}] "
            f"(the four-layer 'linear4' heads and other backbones' heads do not fit)"
        )
    return weight, bias


class DinoImageNet(TorchVerifier):
    """DINOv2's linear evaluation (dinov2/hub/classifiers.py, layers=1): the head reads concat(final CLS token,
    mean of final patch tokens), both after the last layer norm, which is what Dinov2Model's last_hidden_state
    holds. The released heads' preprocessing is the folder's (resize 256, center crop 224, ImageNet mean/std)."""

    def __init__(self, dino: DinoEncoder, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.spec = VerifierSpec(
            name="dino-imagenet",
            kind="supervised",
            needs_condition=True,
            xpred_sigma=0.0,
            description=f"log p(class | image) of DINOv2's linear classifier over {weight.shape[0]} classes",
        )
        self.device = dino.device
        self.dino = dino
        self.weight = weight.to(dino.device)
        self.bias = bias.to(dino.device)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @torch.inference_mode()
    def score(
        self, images: torch.Tensor, conditions: Sequence[RowCondition], probes: torch.Tensor | None
    ) -> torch.Tensor:
        labels = [row_class(self.spec.name, row, c, self.num_classes) for row, c in enumerate(conditions)]
        tokens = self.dino.tokens(images)
        features = torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)
        log_probs = F.linear(features, self.weight, self.bias).log_softmax(dim=-1)
        return log_probs[torch.arange(len(labels)), torch.tensor(labels, device=log_probs.device)]


def load_dino_imagenet(folder: str | Path, device: torch.device, dtype: torch.dtype) -> DinoImageNet:
    """The first head file present, in HEAD_FILES order, is used."""
    dino = DinoEncoder("dino-imagenet", folder, device, dtype, extra_files=("|".join(HEAD_FILES),))
    path = next(dino.root / name for name in HEAD_FILES if (dino.root / name).exists())
    weight, bias = load_linear_head("dino-imagenet", path, 2 * dino.hidden_size)
    return DinoImageNet(dino, weight, bias)


class SelfSupervised(TorchVerifier):
    def __init__(self, dino: DinoEncoder, xpred_sigma: float) -> None:
        self.spec = VerifierSpec(
            name="selfsup",
            kind="self-supervised",
            needs_condition=False,
            xpred_sigma=xpred_sigma,
            description=f"cosine similarity between the DINOv2 CLS features of the x-prediction at sigma <= "
            f"{xpred_sigma:g} and of the final sample",
        )
        self.device = dino.device
        self.dino = dino

    @torch.inference_mode()
    def score(
        self, images: torch.Tensor, conditions: Sequence[RowCondition], probes: torch.Tensor | None
    ) -> torch.Tensor:
        if probes is None or probes.shape[0] != images.shape[0]:
            got = "none" if probes is None else f"{probes.shape[0]} for {images.shape[0]} images"
            raise ValueError(f"selfsup: needs one decoded x-prediction (probe) per row; got {got}")
        # One pass over images and probes together; a row's features do not depend on the rest of the batch.
        cls = self.dino.tokens(torch.cat([images, probes.to(images.device)]))[:, 0]
        final, probe = cls.chunk(2)
        return F.cosine_similarity(final, probe, dim=-1)


def load_selfsup(folder: str | Path, device: torch.device, dtype: torch.dtype, *, xpred_sigma: float) -> SelfSupervised:
    """xpred_sigma is in the denoiser's sigma units: the caller converts the paper's level 0.4."""
    if not xpred_sigma > 0:
        raise ConfigError(
            f"selfsup: xpred_sigma must be positive (the model's sigma for the paper's 0.4); got {xpred_sigma}"
        )
    return SelfSupervised(DinoEncoder("selfsup", folder, device, dtype), xpred_sigma)


# --- Tiny random-weight folders, in the layout of a real DINOv2 repository ------------------------------------

TINY_CLASSES = 10


def save_tiny_dino(folder: str | Path, seed: int = 0) -> Path:
    """A Dinov2Model repository with random weights: 32x32 crops of images resized to 36 (DINOv2's 224 of 256),
    8x8 patches, 2 layers, 32-d tokens."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          mlp_ratio=2)
    Dinov2Model(config).save_pretrained(str(root))
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, resample=3,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(str(root))
    return root


def save_tiny_dino_imagenet(folder: str | Path, seed: int = 0) -> None:
    from safetensors.torch import save_file

    root = save_tiny_dino(folder, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    hidden = Dinov2Config.from_pretrained(str(root)).hidden_size
    save_file({"weight": torch.randn(TINY_CLASSES, 2 * hidden, generator=generator) * 0.3,
               "bias": torch.randn(TINY_CLASSES, generator=generator) * 0.1}, str(root / HEAD_FILES[0]))


def save_tiny_selfsup(folder: str | Path, seed: int = 0) -> None:
    save_tiny_dino(folder, seed)
