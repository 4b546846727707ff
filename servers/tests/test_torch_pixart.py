"""PixArt-Sigma through the VP-epsilon denoiser, checked against diffusers' own PixArtSigmaPipeline built from the
same tiny random-weight folder (saved and loaded exactly as a real one)."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from noisesearch_server.backend import ConfigError
from noisesearch_server.schedules import solve_sigmas
from noisesearch_server.torchmodels import pixart
from noisesearch_server.torchmodels.common import RowCondition

torch.set_num_threads(1)
CPU = torch.device("cpu")
# Mixed case and spaces: the pipeline lower-cases and strips captions, and so must the denoiser.
PROMPT = " A Photo of a RED cat"
NEGATIVE = "blurry photo"
STEPS = 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("pixart")
    pixart.save_tiny(path, seed=0)
    return path


@pytest.fixture(scope="module")
def model(folder):
    return pixart.load(folder, CPU, torch.float32)


@pytest.fixture(scope="module")
def pipeline(folder):
    pipe = diffusers.PixArtSigmaPipeline.from_pretrained(folder, local_files_only=True)
    # "linspace" spacing puts the Karras schedule's ends at the trained sigma_max and sigma_min, and makes
    # init_noise_sigma sigma_max itself ("leading" starts below it and scales by sqrt(sigma^2 + 1)).
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, use_karras_sigmas=True, timestep_spacing="linspace"
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def euler(model, noise: torch.Tensor, conditions, steps: int = STEPS) -> torch.Tensor:
    """The engine's Euler solve from sigma_max * n to 0, in float64 with float32 model calls."""
    sigmas = solve_sigmas(model.spec, model.spec.sigma_max, 0.0, steps)
    x = model.spec.sigma_max * noise.double()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x0 = model.x0(x.float(), float(sigma), conditions).double()
        x = x + (x - x0) / sigma * (sigma_next - sigma)
    return x.float()


def noise(seed: int, rows: int, shape) -> torch.Tensor:
    return torch.randn((rows, *shape), generator=torch.Generator().manual_seed(seed))


def test_spec(model):
    spec = model.spec
    assert (spec.name, spec.process, spec.schedule, spec.rho) == ("pixart-sigma", "ve", "karras", 7.0)
    assert (spec.default_solver, spec.default_steps, spec.default_guidance_scale) == ("euler", 30, 4.5)
    assert spec.takes_prompts and spec.latent_shape == (4, 8, 8) and spec.image_shape == (3, 64, 64)
    # The DDPM linear betas 0.0001 .. 0.02, by hand in float64: sigma = sqrt((1 - abar) / abar). The spec keeps
    # diffusers' float32 values (1 - abar loses ~1e-4 of sigma_min to cancellation), which its pipelines use.
    abar = np.cumprod(1 - np.linspace(0.0001, 0.02, 1000))
    sigmas = np.sqrt((1 - abar) / abar)
    assert spec.sigma_min == pytest.approx(sigmas[0], rel=1e-4) and spec.sigma_min == pytest.approx(0.0100, abs=1e-4)
    assert spec.sigma_max == pytest.approx(sigmas[-1], rel=1e-4) and spec.sigma_max == pytest.approx(157.4, abs=0.1)


@pytest.mark.parametrize("negative,guidance", [(NEGATIVE, 5.0), ("", 3.0)])
def test_agrees_with_the_diffusers_pipeline(model, pipeline, negative, guidance):
    """Our Euler solve over solve_sigmas reproduces PixArtSigmaPipeline's latents with a Karras Euler scheduler
    (no resolution binning, no caption cleaning); an empty negative prompt is the pipeline's default, ""."""
    n = noise(1, 1, model.spec.latent_shape)
    pipeline.scheduler.set_timesteps(STEPS)
    np.testing.assert_allclose(pipeline.scheduler.sigmas.numpy(), solve_sigmas(model.spec, model.spec.sigma_max, 0, STEPS),
                               rtol=1e-6)
    assert float(pipeline.scheduler.init_noise_sigma) == pytest.approx(model.spec.sigma_max, rel=1e-7)
    args = dict(prompt=PROMPT, negative_prompt=negative, guidance_scale=guidance, num_inference_steps=STEPS,
                height=64, width=64, use_resolution_binning=False, clean_caption=False, max_sequence_length=300)
    expected = pipeline(latents=n.clone(), output_type="latent", **args).images
    ours = euler(model, n, [RowCondition(prompt=PROMPT, negative_prompt=negative, guidance=guidance)])
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)
    # Decoding: the pipeline's own VAE decode and post-processing of the same run.
    image = pipeline(latents=n.clone(), output_type="pt", **args).images
    torch.testing.assert_close(model.decode(ours), image, atol=1e-4, rtol=1e-4)


def test_bit_identical_across_calls(model):
    x = 6.0 * noise(2, 3, model.spec.latent_shape)
    conditions = [RowCondition(prompt=PROMPT, negative_prompt=NEGATIVE, guidance=4.0)] * 3
    assert torch.equal(model.x0(x, 6.0, conditions), model.x0(x.clone(), 6.0, conditions))


def test_row_alone_matches_row_in_a_mixed_batch(model):
    x = 3.0 * noise(3, 4, model.spec.latent_shape)
    conditions = [
        RowCondition(prompt=PROMPT, negative_prompt=NEGATIVE, guidance=5.0),
        RowCondition(prompt="a dog", guidance=0.0),
        RowCondition(prompt="a red car", negative_prompt="cat", guidance=1.0),
        RowCondition(prompt="of", guidance=7.5),
    ]
    batch = model.x0(x, 3.0, conditions)
    for i, condition in enumerate(conditions):
        # Not bit-identical: batch size changes the float32 kernels' summation order.
        torch.testing.assert_close(model.x0(x[i : i + 1], 3.0, [condition])[0], batch[i], atol=1e-4, rtol=1e-4)


def test_guidance_zero_is_the_unconditional_prediction(model):
    x = 2.0 * noise(4, 2, model.spec.latent_shape)
    sigma = 2.0
    # A negative prompt N is the conditional prediction for the prompt N; the prompt itself plays no part.
    got = model.x0(x, sigma, [RowCondition(prompt=PROMPT, negative_prompt=NEGATIVE, guidance=0.0),
                              RowCondition(prompt="a dog", negative_prompt=NEGATIVE, guidance=0.0)])
    torch.testing.assert_close(got, model.x0(x, sigma, [RowCondition(prompt=NEGATIVE, guidance=1.0)] * 2))
    # Case and surrounding spaces do not matter: the pipeline's caption preprocessing.
    got = model.x0(x, sigma, [RowCondition(prompt=PROMPT, negative_prompt=" Blurry PHOTO", guidance=0.0)])
    torch.testing.assert_close(got, model.x0(x, sigma, [RowCondition(prompt=NEGATIVE, guidance=1.0)])[:1])


def test_decode_shape_and_range(model):
    images = model.decode(noise(5, 2, model.spec.latent_shape))
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0


def test_identity_follows_weights_and_resolution(model, folder, tmp_path):
    bigger = pixart.load(folder, CPU, torch.float32, resolution=128)
    assert bigger.spec.latent_shape == (4, 16, 16) and bigger.spec.image_shape == (3, 128, 128)
    pixart.save_tiny(tmp_path / "other", seed=1)
    other = pixart.load(tmp_path / "other", CPU, torch.float32)
    assert len({model.spec.identity, bigger.spec.identity, other.spec.identity}) == 3
    assert pixart.load(folder, CPU, torch.float32).spec.identity == model.spec.identity


def test_missing_or_incomplete_folder(folder, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        pixart.load(tmp_path / "nowhere", CPU, torch.float32)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    (broken / "tokenizer" / "spiece.model").unlink()
    shutil.rmtree(broken / "scheduler")
    with pytest.raises(ConfigError) as error:
        pixart.load(broken, CPU, torch.float32)
    for missing in ("transformer/diffusion_pytorch_model.safetensors", "tokenizer/spiece.model",
                    "scheduler/scheduler_config.json"):
        assert missing in str(error.value)
    assert "text_encoder/" not in str(error.value) and "vae/" not in str(error.value)
    with pytest.raises(ConfigError, match="multiple of 16"):
        pixart.load(folder, CPU, torch.float32, resolution=72)
    with pytest.raises(ConfigError, match="unknown option"):
        pixart.load(folder, CPU, torch.float32, name="sdxl")
