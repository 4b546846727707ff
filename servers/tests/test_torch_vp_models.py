"""SDXL and PixArt-Sigma through the VP-epsilon denoiser, each checked against diffusers' own pipeline
(StableDiffusionXLPipeline, PixArtSigmaPipeline) built from the same tiny random-weight folder (saved and loaded
exactly as a real one)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from noisesearch_server.backend import ConfigError
from noisesearch_server.schedules import solve_sigmas
from noisesearch_server.torchmodels import pixart, sdxl
from noisesearch_server.torchmodels.common import RowCondition

torch.set_num_threads(1)
CPU = torch.device("cpu")
NEGATIVE = "blurry photo"
STEPS = 4


@dataclass(frozen=True)
class Case:
    module: ModuleType
    name: str
    pipeline: str
    prompt: str
    guidance: float
    # The trained betas, by hand in float64, and diffusers' float32 sigma_min and sigma_max they give.
    betas: np.ndarray
    sigma_min: Any
    sigma_max: Any
    # The pipeline's arguments beyond the prompts and guidance; `None` passes an empty negative prompt as None.
    pipeline_args: dict[str, Any]
    empty_negative: str | None
    # Files removed from a copy of the folder, besides scheduler/ (each must be named missing).
    removed_files: tuple[str, ...]
    unknown_option: dict[str, Any]
    # load() options for the second folder (other weights), and the spec name they give.
    other_options: dict[str, Any] = field(default_factory=dict)
    other_name: str = ""


CASES = {
    "sdxl": Case(
        module=sdxl, name="sdxl", pipeline="StableDiffusionXLPipeline", prompt="a photo of a red cat", guidance=5.0,
        # SDXL's scaled-linear betas 0.00085 .. 0.012.
        betas=np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, sigma_min=pytest.approx(0.0292, abs=1e-4), sigma_max=pytest.approx(14.61, abs=0.01),
        # An empty negative prompt is the pipeline's default (none given: zero embeddings).
        pipeline_args={}, empty_negative=None,
        removed_files=("unet/diffusion_pytorch_model.safetensors", "tokenizer_2/merges.txt"),
        unknown_option={"steps": 3},
        other_options={"name": "sdxl-dpo"}, other_name="sdxl-dpo",
    ),
    "pixart": Case(
        module=pixart, name="pixart-sigma", pipeline="PixArtSigmaPipeline",
        # Mixed case and spaces: the pipeline lower-cases and strips captions, and so must the denoiser.
        prompt=" A Photo of a RED cat", guidance=4.5,
        # The DDPM linear betas 0.0001 .. 0.02.
        betas=np.linspace(0.0001, 0.02, 1000), sigma_min=pytest.approx(0.0100, abs=1e-4),
        sigma_max=pytest.approx(157.4, abs=0.1),
        # No resolution binning, no caption cleaning; an empty negative prompt is the pipeline's default, "".
        pipeline_args={"use_resolution_binning": False, "clean_caption": False, "max_sequence_length": 300},
        empty_negative="",
        removed_files=("transformer/diffusion_pytorch_model.safetensors", "tokenizer/spiece.model"),
        unknown_option={"name": "sdxl"},
        other_name="pixart-sigma",
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request) -> Case:
    return CASES[request.param]


@pytest.fixture(scope="module")
def folder(case, tmp_path_factory):
    path = tmp_path_factory.mktemp(case.name)
    case.module.save_tiny(path, seed=0)
    return path


@pytest.fixture(scope="module")
def model(case, folder):
    return case.module.load(folder, CPU, torch.float32)


@pytest.fixture(scope="module")
def pipeline(case, folder):
    pipe = getattr(diffusers, case.pipeline).from_pretrained(folder, local_files_only=True)
    # "linspace" spacing puts the Karras schedule's ends at the trained sigma_max and sigma_min, and makes
    # init_noise_sigma sigma_max itself ("leading", SDXL's own, starts below it and scales by sqrt(sigma^2 + 1)).
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


def test_spec(case, model):
    spec = model.spec
    assert (spec.name, spec.process, spec.schedule, spec.rho) == (case.name, "ve", "karras", 7.0)
    assert (spec.default_solver, spec.default_steps, spec.default_guidance_scale) == ("euler", 30, case.guidance)
    assert spec.takes_prompts and spec.latent_shape == (4, 8, 8) and spec.image_shape == (3, 64, 64)
    # sigma = sqrt((1 - abar) / abar) by hand in float64. The spec keeps diffusers' float32 values (1 - abar loses
    # ~1e-4 of sigma_min to cancellation), which its pipelines use.
    abar = np.cumprod(1 - case.betas)
    sigmas = np.sqrt((1 - abar) / abar)
    assert spec.sigma_min == pytest.approx(sigmas[0], rel=1e-4) and spec.sigma_min == case.sigma_min
    assert spec.sigma_max == pytest.approx(sigmas[-1], rel=1e-4) and spec.sigma_max == case.sigma_max


@pytest.mark.parametrize("negative,guidance", [(NEGATIVE, 5.0), ("", 3.0)])
def test_agrees_with_the_diffusers_pipeline(case, model, pipeline, negative, guidance):
    """Our Euler solve over solve_sigmas reproduces the pipeline's latents with a Karras Euler scheduler."""
    n = noise(1, 1, model.spec.latent_shape)
    pipeline.scheduler.set_timesteps(STEPS)
    np.testing.assert_allclose(pipeline.scheduler.sigmas.numpy(), solve_sigmas(model.spec, model.spec.sigma_max, 0, STEPS),
                               rtol=1e-6)
    assert float(pipeline.scheduler.init_noise_sigma) == pytest.approx(model.spec.sigma_max, rel=1e-7)
    args = dict(prompt=case.prompt, negative_prompt=negative or case.empty_negative, guidance_scale=guidance,
                num_inference_steps=STEPS, height=64, width=64, **case.pipeline_args)
    expected = pipeline(latents=n.clone(), output_type="latent", **args).images
    ours = euler(model, n, [RowCondition(prompt=case.prompt, negative_prompt=negative, guidance=guidance)])
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)
    # Decoding: the pipeline's own VAE decode and post-processing of the same run.
    image = pipeline(latents=n.clone(), output_type="pt", **args).images
    torch.testing.assert_close(model.decode(ours), image, atol=1e-4, rtol=1e-4)


def test_bit_identical_across_calls(case, model):
    x = 6.0 * noise(2, 3, model.spec.latent_shape)
    conditions = [RowCondition(prompt=case.prompt, negative_prompt=NEGATIVE, guidance=4.0)] * 3
    assert torch.equal(model.x0(x, 6.0, conditions), model.x0(x.clone(), 6.0, conditions))


def test_row_alone_matches_row_in_a_mixed_batch(case, model):
    x = 3.0 * noise(3, 4, model.spec.latent_shape)
    conditions = [
        RowCondition(prompt=case.prompt, negative_prompt=NEGATIVE, guidance=5.0),
        RowCondition(prompt="a dog", guidance=0.0),
        RowCondition(prompt="a red car", negative_prompt="cat", guidance=1.0),
        RowCondition(prompt="of", guidance=7.5),
    ]
    batch = model.x0(x, 3.0, conditions)
    for i, condition in enumerate(conditions):
        # Not bit-identical: batch size changes the float32 kernels' summation order.
        torch.testing.assert_close(model.x0(x[i : i + 1], 3.0, [condition])[0], batch[i], atol=1e-4, rtol=1e-4)


def test_guidance_zero_is_the_negative_prompts_prediction(case, model):
    x = 2.0 * noise(4, 2, model.spec.latent_shape)
    sigma = 2.0
    # A negative prompt N is the conditional prediction for the prompt N; the prompt itself plays no part.
    got = model.x0(x, sigma, [RowCondition(prompt=case.prompt, negative_prompt=NEGATIVE, guidance=0.0),
                              RowCondition(prompt="a dog", negative_prompt=NEGATIVE, guidance=0.0)])
    torch.testing.assert_close(got, model.x0(x, sigma, [RowCondition(prompt=NEGATIVE, guidance=1.0)] * 2))


@pytest.mark.parametrize("case", ["sdxl"], indirect=True)
def test_sdxl_empty_negative_is_zero_embeddings(model, pipeline):
    """Guidance 0 with an empty negative prompt is the unet called directly on zero embeddings, at the timestep
    diffusers gives sigma."""
    x = 2.0 * noise(4, 2, model.spec.latent_shape)
    sigma = 2.0
    got = model.x0(x, sigma, [RowCondition(prompt=CASES["sdxl"].prompt, guidance=0.0)] * 2)
    scheduler = pipeline.scheduler
    abar = scheduler.alphas_cumprod.numpy()
    t = scheduler._sigma_to_t(np.array(sigma), np.log(((1 - abar) / abar) ** 0.5))
    unet = pipeline.unet
    with torch.no_grad():
        eps = unet(x / (sigma**2 + 1) ** 0.5, torch.tensor(float(t)), encoder_hidden_states=torch.zeros(2, 77, 64),
                   added_cond_kwargs={"text_embeds": torch.zeros(2, 32),
                                      "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}).sample
    torch.testing.assert_close(got, x - sigma * eps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["pixart"], indirect=True)
def test_pixart_caption_case_and_spaces_do_not_matter(model):
    """The pipeline's caption preprocessing: a negative prompt's case and surrounding spaces do not matter."""
    x = 2.0 * noise(4, 2, model.spec.latent_shape)
    sigma = 2.0
    got = model.x0(x, sigma, [RowCondition(prompt=CASES["pixart"].prompt, negative_prompt=" Blurry PHOTO",
                                           guidance=0.0)])
    torch.testing.assert_close(got, model.x0(x, sigma, [RowCondition(prompt=NEGATIVE, guidance=1.0)])[:1])


def test_decode_shape_and_range(model):
    images = model.decode(noise(5, 2, model.spec.latent_shape))
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0


def test_identity_follows_weights_and_resolution(case, model, folder, tmp_path):
    bigger = case.module.load(folder, CPU, torch.float32, resolution=128)
    assert bigger.spec.latent_shape == (4, 16, 16) and bigger.spec.image_shape == (3, 128, 128)
    case.module.save_tiny(tmp_path / "other", seed=1)
    other = case.module.load(tmp_path / "other", CPU, torch.float32, **case.other_options)
    assert other.spec.name == case.other_name
    assert len({model.spec.identity, bigger.spec.identity, other.spec.identity}) == 3
    assert case.module.load(folder, CPU, torch.float32).spec.identity == model.spec.identity


def test_missing_or_incomplete_folder(case, folder, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        case.module.load(tmp_path / "nowhere", CPU, torch.float32)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    for name in case.removed_files:
        (broken / name).unlink()
    shutil.rmtree(broken / "scheduler")
    with pytest.raises(ConfigError) as error:
        case.module.load(broken, CPU, torch.float32)
    for missing in (*case.removed_files, "scheduler/scheduler_config.json"):
        assert missing in str(error.value)
    assert "text_encoder/" not in str(error.value) and "vae/" not in str(error.value)
    with pytest.raises(ConfigError, match="multiple of 16"):
        case.module.load(folder, CPU, torch.float32, resolution=72)
    with pytest.raises(ConfigError, match="unknown option"):
        case.module.load(folder, CPU, torch.float32, **case.unknown_option)


def test_a_vae_that_asks_for_upcasting_decodes_in_float32_under_float16():
    from noisesearch_server.torchmodels.vp import vae_dtype

    # The folder's config as load_config returns it (a dict), and a loaded VAE's (attributes).
    assert vae_dtype({"force_upcast": True}, torch.float16) == torch.float32
    assert vae_dtype({"force_upcast": False}, torch.float16) == torch.float16
    assert vae_dtype(type("Config", (), {"force_upcast": True})(), torch.float16) == torch.float32
    assert vae_dtype({"force_upcast": True}, torch.bfloat16) == torch.bfloat16
