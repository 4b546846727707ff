"""Which PyTorch model and verifier names exist, where their code lives, and what condition each verifier
needs; loading a server's model and verifiers from the folders a user names. Modules are imported only when
named, so a server hosting one model never imports the others."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backend import ConfigError
from ..schedules import sigma_at_level
from .adapter import TorchModel, TorchVerifierAdapter
from .common import pick_device, pick_dtype


@dataclass(frozen=True)
class Entry:
    module: str
    loader: str
    tiny: str
    options: dict = field(default_factory=dict)
    # For verifiers: "prompt", "class", or "" (no condition).
    condition: str = ""


MODELS: dict[str, Entry] = {
    "flux": Entry("flux", "load", "save_tiny"),
    "sdxl": Entry("sdxl", "load", "save_tiny"),
    "sdxl-dpo": Entry("sdxl", "load", "save_tiny", {"name": "sdxl-dpo"}),
    "pixart-sigma": Entry("pixart", "load", "save_tiny"),
    "sit": Entry("sit", "load", "save_tiny"),
}

VERIFIERS: dict[str, Entry] = {
    "clip-score": Entry("clip_verifiers", "load_clip_score", "save_tiny_clip_score", condition="prompt"),
    "clip-imagenet": Entry("clip_verifiers", "load_clip_imagenet", "save_tiny_clip_imagenet", condition="class"),
    "aesthetic": Entry("clip_verifiers", "load_aesthetic", "save_tiny_aesthetic"),
    "pickscore": Entry("clip_verifiers", "load_pickscore", "save_tiny_pickscore", condition="prompt"),
    "dino-imagenet": Entry("dino_verifiers", "load_dino_imagenet", "save_tiny_dino_imagenet", condition="class"),
    "selfsup": Entry("dino_verifiers", "load_selfsup", "save_tiny_selfsup"),
    "imagereward": Entry("imagereward", "load_imagereward", "save_tiny_imagereward", condition="prompt"),
}

# The paper's self-supervised verifier compares the sample with the x-prediction at noise level 0.4.
SELFSUP_LEVEL = 0.4


def _function(entry: Entry, name: str):
    return getattr(importlib.import_module(f"{__package__}.{entry.module}"), name)


def save_tiny(name: str, folder: str | Path, seed: int = 0) -> None:
    """Writes a tiny random-weight folder for model or verifier `name`, laid out as its real weights are."""
    entry = MODELS.get(name) or VERIFIERS.get(name)
    if entry is None:
        raise ConfigError(f"unknown model or verifier {name!r}; want one of {', '.join([*MODELS, *VERIFIERS])}")
    _function(entry, entry.tiny)(Path(folder), seed=seed)


def load_model(name: str, folder: str | Path, device_flag: str, dtype_flag: str, resolution: int | None) -> TorchModel:
    if name not in MODELS:
        raise ConfigError(f"--model: unknown model {name!r}; want gmm or NAME=DIR with NAME one of {', '.join(MODELS)}")
    entry = MODELS[name]
    device = pick_device(device_flag)
    options = dict(entry.options)
    if resolution is not None:
        options["resolution"] = resolution
    denoiser = _function(entry, entry.loader)(Path(folder), device, pick_dtype(device, dtype_flag), **options)
    return TorchModel(denoiser)


def load_verifier(
    name: str, folder: str | Path, device: str | torch.device, dtype_flag: str, xpred_sigma: float | None = None
) -> TorchVerifierAdapter:
    """One verifier on `device`; `xpred_sigma` (the model's sigma at SELFSUP_LEVEL) is what selfsup needs and
    what no other verifier takes. Which model it scores is the caller's to check (load_verifiers does)."""
    if name not in VERIFIERS:
        raise ConfigError(f"--verifier: unknown verifier {name!r}; want one of {', '.join(VERIFIERS)}")
    if name == "selfsup" and xpred_sigma is None:
        raise ConfigError(f"--verifier selfsup: needs xpred_sigma, the model's sigma at noise level {SELFSUP_LEVEL}")
    entry = VERIFIERS[name]
    options = {"xpred_sigma": xpred_sigma} if name == "selfsup" else {}
    where = pick_device(str(device))
    loaded = _function(entry, entry.loader)(Path(folder), where, pick_dtype(where, dtype_flag), **options)
    return TorchVerifierAdapter(loaded, entry.condition)


def load_verifiers(
    folders: dict[str, str | Path], model: TorchModel, dtype_flag: str
) -> list[TorchVerifierAdapter]:
    """Each named verifier, on the model's device; one that cannot score this model's samples is refused here."""
    spec = model.spec
    verifiers = []
    for name, folder in folders.items():
        if name not in VERIFIERS:
            raise ConfigError(f"--verifier: unknown verifier {name!r}; want one of {', '.join(VERIFIERS)}")
        entry = VERIFIERS[name]
        if entry.condition == "prompt" and not spec.takes_prompts:
            raise ConfigError(f"--verifier {name}: it scores against a prompt, and model {spec.name!r} takes classes")
        if entry.condition == "class" and not spec.num_classes:
            raise ConfigError(f"--verifier {name}: it scores against a class, and model {spec.name!r} has none")
        xpred_sigma = float(sigma_at_level(spec, SELFSUP_LEVEL)) if name == "selfsup" else None
        verifiers.append(load_verifier(name, folder, model.device, dtype_flag, xpred_sigma))
    return verifiers
