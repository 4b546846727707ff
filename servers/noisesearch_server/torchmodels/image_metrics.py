"""Population metrics of a set of decoded images: FID, Inception Score and CLIP-FID, against reference
statistics kept in local files. Nothing here downloads.

- FID (Heusel et al. 2017) with pytorch-fid's port of the TensorFlow FID Inception: torchvision's
  inception_v3 (1008 classes, no aux head) with pytorch-fid's patched blocks, weights from a local
  `pt_inception-2015-12-05-6726825d.pth` (the file pytorch-fid releases). Images are resized to 299 x 299
  bilinearly and scaled to [-1, 1] as pytorch-fid does; features are the 2048-d pool3 activations, fitted
  with np.cov's unbiased covariance as pytorch-fid does. Tr sqrtm(S1 S2) is taken as the sum of the square
  roots of the eigenvalues of S1 S2, from a symmetric eigenproblem in float64 (population.frechet_distance,
  or an n x n one when there are fewer images than dimensions; see fid_to_reference). That equals
  pytorch-fid's scipy.linalg.sqrtm route (the tests check it against pytorch-fid's own function) and is
  faster (scipy's sqrtm of a 2048 x 2048 product takes about 30 s on one CPU thread), and stays accurate
  when fewer images than dimensions make S1 S2 singular, where sqrtm warns that it may not be.
- Inception Score (Salimans et al. 2016) from the same network: softmax over all 1008 outputs of
  pool3 @ fc.weight^T WITHOUT the bias. That is what the original TF code computes (it multiplies pool_3 by
  the weight of softmax/logits/MatMul and never adds the bias), and what ADM's evaluator and torch-fidelity's
  "logits_unbiased" reproduce, so scores compare with published ones. The 8 extra outputs are unused classes
  of that graph; dropping them would change the scores. 10 splits in order, as the original code, when every
  split has at least MIN_IMAGES_PER_IS_SPLIT images; one split for smaller sets.
- CLIP-FID (Kynkaanniemi et al. 2023, clean-fid's "clip_vit_b_32"): the Frechet distance between
  Gaussians fitted to CLIP image embeddings (the projected, unnormalised `encode_image` output), after
  clean-fid's CLIP preprocessing (shorter side to 224 bicubic, centre crop, CLIP normalisation), from a
  transformers CLIP folder such as openai/clip-vit-base-patch32.

Images are quantised to 8 bits first, as they are when saved as PNG: reference sets are read from 8-bit
files, and published FIDs measure saved samples.

Reference statistics are .npz files with "mu" and "sigma" (pytorch-fid's and ADM's reference batches use
these names); `write_reference` makes one from images, adding "n", the number of images.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backend import ConfigError
from ..population import frechet_distance, inception_score
from .common import require_files
from .imagereward import preprocess as clip_preprocess

INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
FID_SIZE = 299
POOL3_DIM = 2048
INCEPTION_CLASSES = 1008
IS_SPLITS = 10
MIN_IMAGES_PER_IS_SPLIT = 100


def fid_inception() -> nn.Module:
    """pytorch-fid's FID Inception, built without its downloading loader: torchvision's inception_v3 with
    1008 classes, no aux classifier, and the TF graph's differing blocks patched in."""
    import torchvision
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    net = torchvision.models.inception_v3(num_classes=INCEPTION_CLASSES, aux_logits=False, weights=None,
                                          init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class FidInceptionFeatures(nn.Module):
    """Images [B, 3, H, W] in [0, 1] -> (pool3 [B, 2048], unbiased logits [B, 1008])."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        x = F.interpolate(images, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d,
                      n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = block(x)
        pool3 = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return pool3, pool3 @ n.fc.weight.T


def load_fid_inception(path: str | Path) -> FidInceptionFeatures:
    """The FID Inception with the weights in `path` (pytorch-fid's released state dict), loaded strictly."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"FID Inception weights: file {str(file)!r} does not exist; download {INCEPTION_WEIGHTS} "
                          "(pytorch-fid's release) and point at it")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file fails in many ways; all mean "not these weights"
        raise ConfigError(f"FID Inception weights: cannot read {str(file)!r}: {error}") from None
    net = fid_inception()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ConfigError(
            f"FID Inception weights: {str(file)!r} is not {INCEPTION_WEIGHTS}'s layout: {error}") from None
    return FidInceptionFeatures(net).eval().requires_grad_(False)


class ClipImageFeatures(nn.Module):
    """Images [B, 3, H, W] in [0, 1] -> CLIP image embeddings [B, projection_dim], as clean-fid's CLIP_fx."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.image_size = model.config.image_size
        self.dim = model.visual_projection.out_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = clip_preprocess(images.float(), self.image_size).to(self.model.dtype)
        return self.model(pixel_values=pixels).image_embeds


def load_clip_features(folder: str | Path, dtype: torch.dtype) -> ClipImageFeatures:
    """The vision tower and projection of a transformers CLIP folder (a full CLIPModel checkpoint's text
    weights are ignored); every vision weight must be there."""
    root = require_files("CLIP-FID", folder, ("config.json", "model.safetensors|pytorch_model.bin"))
    from transformers import AutoConfig, CLIPConfig, CLIPVisionModelWithProjection
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    # A full CLIPModel folder's text weights are expected to go unused: no report of them. What matters,
    # a missing vision weight, is checked below.
    transformers_logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(str(root), local_files_only=True)
        if isinstance(config, CLIPConfig):
            # A full CLIPModel folder keeps the projection width at the top level only.
            vision = config.vision_config
            vision.projection_dim = config.projection_dim
            config = vision
        model, info = CLIPVisionModelWithProjection.from_pretrained(
            str(root), config=config, local_files_only=True, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigError(f"CLIP-FID: cannot load a CLIP model from {str(root)!r}: {error}") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys", ())) + sorted(info.get("mismatched_keys", ()))
    if missing:
        raise ConfigError(f"CLIP-FID: {str(root)!r} lacks CLIP vision weights: {', '.join(map(str, missing))}")
    return ClipImageFeatures(model).eval().requires_grad_(False)


class GaussianFit:
    """Running mean and unbiased covariance (np.cov's, as pytorch-fid uses) of features added in batches,
    in float64, so a reference set of any size streams through in constant memory."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.total = np.zeros(dim)
        self.outer = np.zeros((dim, dim))

    def add(self, features: np.ndarray) -> None:
        features = np.asarray(features, dtype=np.float64)
        self.n += len(features)
        self.total += features.sum(axis=0)
        self.outer += features.T @ features

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.n}")
        mu = self.total / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, (sigma + sigma.T) / 2


def fid_to_reference(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """The Frechet distance between the Gaussian fitted to `features` [n, D] (np.cov's covariance) and the
    reference (mu, sigma). With fewer samples than dimensions the sample covariance is C^T C, C the centred
    features over sqrt(n - 1), and the nonzero eigenvalues of C^T C sigma are those of the n x n matrix
    C sigma C^T: the cross term then costs O(n D^2), not a D x D decomposition (for 2048-d features, a
    fraction of a second instead of 5 to 20 s on one CPU thread)."""
    n, dim = features.shape
    if n < 2:
        raise ValueError(f"a Frechet distance needs at least 2 images, got {n}")
    if n >= dim:
        fit = GaussianFit(dim)
        fit.add(features)
        return frechet_distance(*fit.stats(), mu, sigma)
    mean = features.mean(axis=0)
    centred = (features - mean) / np.sqrt(n - 1)
    middle = centred @ sigma @ centred.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mean - mu
    # As population.frechet_distance: rounding can leave a tiny negative for identical inputs.
    return max(float(diff @ diff + (centred ** 2).sum() + np.trace(sigma) - 2 * cross), 0.0)


def _npz_count(path: Path) -> int | None:
    """How many images made a reference: our "n", or the length of ADM's "arr_0" image batch, read from the
    .npy header so gigabytes of images are not loaded for one number."""
    with np.load(path) as data:
        if "n" in data.files:
            return int(data["n"])
    with zipfile.ZipFile(path) as archive:
        if "arr_0.npy" not in archive.namelist():
            return None
        with archive.open("arr_0.npy") as member:
            major, _ = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, _ = read_header(member)
            return int(shape[0])


def load_reference(path: str | Path, dim: int, what: str) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(mu, sigma, number of reference images or None) from an .npz with "mu" [dim] and "sigma" [dim, dim]."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{what} reference: file {str(file)!r} does not exist")
    try:
        with np.load(file) as data:
            absent = [key for key in ("mu", "sigma") if key not in data.files]
            if absent:
                raise ConfigError(f"{what} reference: {str(file)!r} lacks {', '.join(absent)} "
                                  f"(has {', '.join(data.files) or 'nothing'})")
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        count = _npz_count(file)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{what} reference: cannot read {str(file)!r} as .npz: {error}") from None
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ConfigError(f"{what} reference: {str(file)!r} has mu {mu.shape} and sigma {sigma.shape}; "
                          f"the features are {dim}-dimensional")
    return mu, sigma, count


def quantize(images: torch.Tensor) -> torch.Tensor:
    return torch.round(images.clamp(0.0, 1.0) * 255.0) / 255.0


class ImagePopulationMetrics:
    """FID and IS (when Inception weights are given; FID also needs a reference) and CLIP-FID (a CLIP folder
    and its reference) of a set of images."""

    def __init__(self, inception: FidInceptionFeatures | None, fid_reference, clip: ClipImageFeatures | None,
                 clip_reference, device: torch.device, dtype: torch.dtype, batch_size: int) -> None:
        self.inception = inception.to(device=device, dtype=dtype) if inception is not None else None
        self.clip = clip.to(device=device) if clip is not None else None
        self.fid_reference = fid_reference
        self.clip_reference = clip_reference
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size

    @classmethod
    def load(cls, inception_weights: str | Path | None, fid_reference: str | Path | None,
             clip_folder: str | Path | None, clip_reference: str | Path | None,
             device: torch.device, dtype: torch.dtype, batch_size: int = 50) -> ImagePopulationMetrics:
        if fid_reference is not None and inception_weights is None:
            raise ConfigError("FID reference given without the FID Inception weights it needs "
                              f"({INCEPTION_WEIGHTS})")
        if clip_reference is not None and clip_folder is None:
            raise ConfigError("CLIP-FID reference given without the CLIP folder it needs")
        inception = load_fid_inception(inception_weights) if inception_weights is not None else None
        fid_stats = load_reference(fid_reference, POOL3_DIM, "FID") if fid_reference is not None else None
        clip = load_clip_features(clip_folder, dtype) if clip_folder is not None else None
        clip_stats = None
        if clip_reference is not None:
            clip_stats = load_reference(clip_reference, clip.dim, "CLIP-FID")
        return cls(inception, fid_stats, clip, clip_stats, device, dtype, batch_size)

    def _batches(self, images: torch.Tensor | Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
        chunks = [images] if isinstance(images, torch.Tensor) else images
        for chunk in chunks:
            if chunk.ndim != 4 or chunk.shape[1] != 3:
                raise ValueError(f"images must be [N, 3, H, W] in [0, 1], got {tuple(chunk.shape)}")
            for start in range(0, len(chunk), self.batch_size):
                yield quantize(chunk[start:start + self.batch_size].to(self.device, torch.float32))

    def _feature_batches(self, images) -> Iterator[tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]]:
        """Per batch, in float64: Inception pool3 features, IS log-posteriors and CLIP embeddings (None for
        what is not configured)."""
        with torch.inference_mode():
            for batch in self._batches(images):
                pool3 = log_posteriors = clip = None
                if self.inception is not None:
                    features, logits = self.inception(batch.to(self.dtype))
                    pool3 = features.double().cpu().numpy()
                    log_posteriors = torch.log_softmax(logits.double(), dim=1).cpu().numpy()
                if self.clip is not None:
                    clip = self.clip(batch).double().cpu().numpy()
                yield pool3, log_posteriors, clip

    def compute(self, images: torch.Tensor | Iterable[torch.Tensor]) -> dict:
        """images: [N, 3, H, W] in [0, 1] (or an iterable of such batches), N >= 2."""
        if self.inception is None and self.clip is None:
            raise ConfigError("image metrics: neither FID Inception weights nor a CLIP folder is configured")
        pool3, log_posteriors, clip = (None if parts[0] is None else np.concatenate(parts)
                                       for parts in zip(*self._feature_batches(images)))
        result: dict = {"samples": len(pool3 if pool3 is not None else clip)}
        if pool3 is not None:
            result["feature_dim"] = POOL3_DIM
            splits = IS_SPLITS if len(pool3) >= IS_SPLITS * MIN_IMAGES_PER_IS_SPLIT else 1
            scores = [inception_score(part) for part in np.array_split(log_posteriors, splits)]
            result.update({"is": float(np.mean(scores)), "is_std": float(np.std(scores)), "is_splits": splits})
            if self.fid_reference is not None:
                mu, sigma, count = self.fid_reference
                result.update({"fid": fid_to_reference(pool3, mu, sigma), "reference_samples": count})
        if clip is not None:
            result["clip_feature_dim"] = self.clip.dim
            if self.clip_reference is not None:
                mu, sigma, count = self.clip_reference
                result.update({"clip_fid": fid_to_reference(clip, mu, sigma), "clip_reference_samples": count})
        return result

    def write_reference(self, images: torch.Tensor | Iterable[torch.Tensor], fid_path: str | Path | None = None,
                        clip_path: str | Path | None = None) -> None:
        """Reference statistics of `images` (a tensor, or an iterable of batches: a large set streams through
        in constant memory) as .npz files with mu, sigma and n: Inception pool3 to `fid_path`, CLIP
        embeddings to `clip_path`."""
        if fid_path is not None and self.inception is None:
            raise ConfigError(f"an FID reference needs the FID Inception weights ({INCEPTION_WEIGHTS})")
        if clip_path is not None and self.clip is None:
            raise ConfigError("a CLIP-FID reference needs a CLIP folder")
        pool3 = GaussianFit(POOL3_DIM) if self.inception is not None else None
        clip = GaussianFit(self.clip.dim) if self.clip is not None else None
        for pool3_batch, _, clip_batch in self._feature_batches(images):
            for fit, batch in ((pool3, pool3_batch), (clip, clip_batch)):
                if fit is not None:
                    fit.add(batch)
        for path, fit in ((fid_path, pool3), (clip_path, clip)):
            if path is not None:
                mu, sigma = fit.stats()
                np.savez(Path(path), mu=mu, sigma=sigma, n=np.int64(fit.n))


def save_random_fid_inception(path: str | Path, seed: int = 0) -> None:
    """Random weights with the released file's layout (the real network's size: it has no tiny form), He-
    initialised so activations stay finite through the 20-odd layers with BatchNorm in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in fid_inception().state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = torch.ones_like(value)
        elif key.endswith("running_mean"):
            state[key] = torch.zeros_like(value)
        elif key.endswith("bias"):
            state[key] = 0.1 * torch.randn(value.shape, generator=generator)
        elif value.ndim == 1:  # BatchNorm scales
            state[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=generator)
        else:
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=generator) * (2.0 / fan_in) ** 0.5
    torch.save(state, Path(path))


TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def save_tiny_clip(folder: str | Path, seed: int = 0) -> None:
    """A random-weight CLIPModel folder (config.json + model.safetensors) laid out as
    openai/clip-vit-base-patch32 is: 32-pixel images in 8-pixel patches, 16-d projections."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={**TINY_CLIP, "vocab_size": 64, "max_position_embeddings": 16, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**TINY_CLIP, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):  # transformers initialises from the global generator
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(str(folder))
