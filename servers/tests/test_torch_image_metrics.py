"""FID, Inception Score and CLIP-FID over decoded images: the Inception loads strictly in the released
layout and gives pytorch-fid's own features; the distance is pytorch-fid's and a hand computation's; a set
against its own statistics scores 0, identical images an IS of 1; missing files are named."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from noisesearch_server.backend import ConfigError
from noisesearch_server.torchmodels.image_metrics import (
    INCEPTION_WEIGHTS,
    GaussianFit,
    ImagePopulationMetrics,
    fid_to_reference,
    frechet_distance,
    quantize,
    save_random_fid_inception,
    save_tiny_clip,
)

torch.set_num_threads(1)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    save_random_fid_inception(root / INCEPTION_WEIGHTS, seed=0)
    save_tiny_clip(root / "clip", seed=0)
    return root


@pytest.fixture(scope="module")
def images():
    # Not square and not 299: the resize to 299 and CLIP's shorter-side resize and crop both do work.
    return torch.rand(3, 3, 40, 36, generator=torch.Generator().manual_seed(0))


def test_inception_loads_the_released_layout_and_gives_pytorch_fids_features(files, images, monkeypatch):
    import pytorch_fid.inception as pytorch_fid

    state = torch.load(files / INCEPTION_WEIGHTS, weights_only=True)
    # pytorch-fid loads the released file strictly into its own network; handing it ours instead of the
    # download proves the layout and gives the reference features.
    monkeypatch.setattr(pytorch_fid, "load_state_dict_from_url", lambda *args, **kwargs: state)
    reference = pytorch_fid.InceptionV3([pytorch_fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    metrics = ImagePopulationMetrics.load(files / INCEPTION_WEIGHTS, None, None, None, CPU, torch.float32)
    batch = quantize(images[:2])
    with torch.inference_mode():
        expected = reference(batch)[0].flatten(1)
        pool3, logits = metrics.inception(batch)
    assert pool3.shape == (2, 2048) and torch.isfinite(pool3).all() and pool3.std() > 0
    assert torch.allclose(pool3, expected, rtol=1e-4, atol=1e-5)
    # The Inception Score's logits: pool3 times the classifier's weight, its bias left out, all 1008 classes.
    assert torch.allclose(logits, expected @ state["fc.weight"].T, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits, logits + state["fc.bias"], atol=1e-3)


def test_frechet_distance_equals_a_hand_computation_and_pytorch_fids():
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(0)
    samples = rng.standard_normal((60, 5)) @ rng.standard_normal((5, 5)) + 1.0
    reference = rng.standard_normal((80, 5)) @ rng.standard_normal((5, 5))
    fit = GaussianFit(5)
    fit.add(reference[:17])
    fit.add(reference[17:])
    mu, sigma = fit.stats()
    assert np.allclose(mu, reference.mean(axis=0)) and np.allclose(sigma, np.cov(reference, rowvar=False))
    # Enough samples for a full-rank covariance, and fewer samples than dimensions (the n x n route).
    for features in (samples, samples[:3]):
        mean, cov = features.mean(axis=0), np.cov(features, rowvar=False)
        # Tr sqrt(S1 S2) by hand: the square roots of the (real, non-negative) eigenvalues of S1 S2.
        roots = np.sqrt(np.clip(np.linalg.eigvals(cov @ sigma).real, 0, None)).sum()
        by_hand = ((mean - mu) ** 2).sum() + np.trace(cov) + np.trace(sigma) - 2 * roots
        assert fid_to_reference(features, mu, sigma) == pytest.approx(by_hand, rel=1e-7)
        assert fid_to_reference(features, mu, sigma) == pytest.approx(
            calculate_frechet_distance(mean, cov, mu, sigma), rel=1e-6)
    assert fid_to_reference(samples, samples.mean(axis=0), np.cov(samples, rowvar=False)) == pytest.approx(0, abs=1e-9)
    # Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    assert frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b)) == pytest.approx(3 + 1 + 1 + 4)


def test_a_set_against_its_own_statistics_and_identical_images(files, images, tmp_path):
    maker = ImagePopulationMetrics.load(files / INCEPTION_WEIGHTS, None, files / "clip", None, CPU, torch.float32)
    # Two batches: a reference set streams through in pieces.
    maker.write_reference([images[:2], images[2:]], fid_path=tmp_path / "fid.npz", clip_path=tmp_path / "clip.npz")
    with np.load(tmp_path / "fid.npz") as stats:
        assert stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048) and int(stats["n"]) == 3
    metrics = ImagePopulationMetrics.load(files / INCEPTION_WEIGHTS, tmp_path / "fid.npz", files / "clip",
                                          tmp_path / "clip.npz", CPU, torch.float32, batch_size=2)
    same = metrics.compute(images)
    assert same["samples"] == 3 and same["reference_samples"] == 3 and same["feature_dim"] == 2048
    assert same["fid"] == pytest.approx(0, abs=1e-6) and same["clip_fid"] == pytest.approx(0, abs=1e-6)
    assert same["clip_feature_dim"] == 16 and same["clip_reference_samples"] == 3
    copies = metrics.compute(images[:1].expand(3, -1, -1, -1))
    assert copies["is"] == pytest.approx(1.0, abs=1e-9) and copies["is_splits"] == 1
    # One image three times is far from the reference: its covariance is 0, the reference's is not.
    assert copies["fid"] > 1e-3 and copies["clip_fid"] > 1e-3
    assert same["is"] > copies["is"]


def test_clip_features_are_clean_fids_definition(files, images):
    from transformers import CLIPModel

    metrics = ImagePopulationMetrics.load(None, None, files / "clip", None, CPU, torch.float32)
    batch = quantize(images)
    # clean-fid's clip_vit_b_32: Resize(224 -> here 32, bicubic) and CenterCrop on the image, then /255,
    # CLIP's normalisation and encode_image (the projected embedding, not normalised).
    x = TF.center_crop(TF.resize(batch, 32, interpolation=InterpolationMode.BICUBIC, antialias=True), 32)
    x = TF.normalize(x.clamp(0, 1), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    model = CLIPModel.from_pretrained(str(files / "clip")).eval()
    with torch.inference_mode():
        expected = model.get_image_features(pixel_values=x).pooler_output
        assert torch.allclose(metrics.clip(batch), expected, rtol=1e-4, atol=1e-5)


def test_an_adm_reference_batch_gives_its_image_count(files, tmp_path):
    rng = np.random.default_rng(1)
    features = rng.standard_normal((7, 16))
    np.savez(tmp_path / "adm.npz", arr_0=np.zeros((7, 8, 8, 3), np.uint8), mu=features.mean(0),
             sigma=np.cov(features, rowvar=False))
    metrics = ImagePopulationMetrics.load(None, None, files / "clip", tmp_path / "adm.npz", CPU, torch.float32)
    assert metrics.clip_reference[2] == 7
    np.savez(tmp_path / "bare.npz", mu=features.mean(0), sigma=np.cov(features, rowvar=False))
    metrics = ImagePopulationMetrics.load(None, None, files / "clip", tmp_path / "bare.npz", CPU, torch.float32)
    assert metrics.clip_reference[2] is None


def test_missing_or_wrong_files_are_named(files, tmp_path):
    def load(**paths):
        options = {"inception_weights": None, "fid_reference": None, "clip_folder": None, "clip_reference": None}
        return ImagePopulationMetrics.load(**{**options, **paths}, device=CPU, dtype=torch.float32)

    with pytest.raises(ConfigError, match=f"{tmp_path / INCEPTION_WEIGHTS}.* does not exist"):
        load(inception_weights=tmp_path / INCEPTION_WEIGHTS)
    partial = {k: v for k, v in torch.load(files / INCEPTION_WEIGHTS, weights_only=True).items()
               if k.startswith("Conv2d_1a")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match="Missing key.*Mixed_7c"):
        load(inception_weights=tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match="without the FID Inception weights"):
        load(fid_reference=tmp_path / "fid.npz")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'none.npz'}.* does not exist"):
        load(clip_folder=files / "clip", clip_reference=tmp_path / "none.npz")
    np.savez(tmp_path / "mu_only.npz", mu=np.zeros(16))
    with pytest.raises(ConfigError, match="lacks sigma"):
        load(clip_folder=files / "clip", clip_reference=tmp_path / "mu_only.npz")
    np.savez(tmp_path / "wide.npz", mu=np.zeros(8), sigma=np.eye(8))
    with pytest.raises(ConfigError, match="16-dimensional"):
        load(clip_folder=files / "clip", clip_reference=tmp_path / "wide.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="missing config.json, model.safetensors or pytorch_model.bin"):
        load(clip_folder=tmp_path / "empty")
    (tmp_path / "clip").mkdir()
    shutil.copy(files / "clip" / "config.json", tmp_path / "clip")
    weights = load_file(files / "clip" / "model.safetensors")
    del weights["vision_model.post_layernorm.weight"]
    save_file(weights, tmp_path / "clip" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="lacks CLIP vision weights: .*post_layernorm.weight"):
        load(clip_folder=tmp_path / "clip")
