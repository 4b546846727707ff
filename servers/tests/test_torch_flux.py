"""FLUX.1-dev wrapper against diffusers' own FluxPipeline, on a tiny random-weight folder with the released layout."""

from __future__ import annotations

import math
import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from noisesearch_server.backend import ConfigError  # noqa: E402
from noisesearch_server.schedules import solve_sigmas  # noqa: E402
from noisesearch_server.torchmodels import flux  # noqa: E402
from noisesearch_server.torchmodels.common import RowCondition  # noqa: E402

from diffusers import FluxPipeline  # noqa: E402

RESOLUTION = 32
STEPS = 4
PROMPT = "a photo of a cat"
# float32 end to end; the two sides differ only in rounding (the pipeline's timestep goes through t*1000/1000,
# its sigmas through float32), which stays far below this after four steps.
TOLERANCE = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux") / "FLUX.1-dev"
    flux.save_tiny(root, seed=0)
    return root


@pytest.fixture(scope="module")
def model(folder):
    return flux.load(folder, torch.device("cpu"), torch.float32, resolution=RESOLUTION)


def unit_noise(rows: int, shape, seed: int = 0):
    return torch.randn((rows, *shape), generator=torch.Generator().manual_seed(seed))


def test_spec(model):
    spec = model.spec
    assert (spec.process, spec.schedule, spec.sigma_max, spec.sigma_min) == ("flow", "shifted", 1.0, 1e-3)
    assert spec.latent_shape == (4, RESOLUTION // 8, RESOLUTION // 8)
    assert spec.image_shape == (3, RESOLUTION, RESOLUTION)
    assert (spec.default_solver, spec.default_steps, spec.default_guidance_scale) == ("euler", 30, 3.5)
    assert spec.takes_prompts and spec.num_classes == 0
    # 4 image tokens with the released config: mu = 0.5 + (4 - 256) * 0.65 / 3840.
    assert spec.schedule_shift == pytest.approx(math.exp(0.5 + (4 - 256) * 0.65 / 3840), rel=1e-12)


def test_schedule_shift_at_released_resolutions():
    released = {"use_dynamic_shifting": True, "base_image_seq_len": 256, "max_image_seq_len": 4096,
                "base_shift": 0.5, "max_shift": 1.15, "shift": 3.0}
    assert flux.schedule_shift(released, 4096) == pytest.approx(math.exp(1.15))  # 1024 x 1024
    assert flux.schedule_shift(released, 256) == pytest.approx(math.exp(0.5))  # 256 x 256
    assert flux.schedule_shift({"use_dynamic_shifting": False, "shift": 3.0}, 4096) == 3.0
    with pytest.raises(ConfigError, match="use_karras_sigmas"):
        flux.schedule_shift({**released, "use_karras_sigmas": True}, 4096)


def test_euler_over_x0_reproduces_the_pipeline(folder, model):
    """Our x0 driven by the engine's Euler step over solve_sigmas lands where FluxPipeline lands from the same
    noise, and decoding gives the pipeline's image."""
    pipeline = FluxPipeline.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    c, h, w = model.spec.latent_shape
    noise = unit_noise(1, model.spec.latent_shape)
    final = {}

    def keep_latents(pipe, step, timestep, kwargs):
        final["latents"] = kwargs["latents"]
        return {}

    image = pipeline(
        PROMPT, height=RESOLUTION, width=RESOLUTION, num_inference_steps=STEPS, guidance_scale=3.5,
        latents=FluxPipeline._pack_latents(noise.clone(), 1, c, h, w), output_type="pt",
        callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"],
    ).images
    expected = FluxPipeline._unpack_latents(final["latents"], RESOLUTION, RESOLUTION, pipeline.vae_scale_factor)

    sigmas = solve_sigmas(model.spec, model.spec.sigma_max, 0.0, STEPS)
    assert sigmas == pytest.approx(pipeline.scheduler.sigmas.double().numpy(), abs=1e-6)
    x = model.spec.sigma_max * noise
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = model.x0(x, float(sigma), [RowCondition(prompt=PROMPT, guidance=3.5)])
        x = x + (x - denoised) / float(sigma) * float(sigma_next - sigma)
    # The trajectory moved: agreement is not two copies of the starting noise.
    assert (x - noise).abs().max() > 0.1
    torch.testing.assert_close(x, expected, rtol=TOLERANCE, atol=TOLERANCE)
    torch.testing.assert_close(model.decode(x), image, rtol=TOLERANCE, atol=TOLERANCE)


def test_same_input_gives_bit_identical_output(model):
    x = unit_noise(2, model.spec.latent_shape, seed=1)
    conditions = [RowCondition(prompt="a red car", guidance=3.5), RowCondition(prompt=PROMPT, guidance=2.0)]
    assert torch.equal(model.x0(x, 0.6, conditions), model.x0(x, 0.6, conditions))


def test_rows_are_independent_and_guidance_reaches_the_transformer(model):
    x = unit_noise(3, model.spec.latent_shape, seed=2)
    conditions = [RowCondition(prompt=PROMPT, guidance=3.5), RowCondition(prompt="a dog", guidance=1.0),
                  RowCondition(prompt=None, guidance=5.0)]
    batch = model.x0(x, 0.5, conditions)
    for row, condition in enumerate(conditions):
        alone = model.x0(x[row:row + 1], 0.5, [condition])
        torch.testing.assert_close(batch[row:row + 1], alone, rtol=1e-5, atol=1e-6)
    other_guidance = model.x0(x[:1], 0.5, [RowCondition(prompt=PROMPT, guidance=1.0)])
    other_prompt = model.x0(x[:1], 0.5, [RowCondition(prompt="a dog", guidance=3.5)])
    assert (other_guidance - batch[:1]).abs().max() > 1e-4
    assert (other_prompt - batch[:1]).abs().max() > 1e-4


def test_decode_gives_unit_range_images(model):
    images = model.decode(unit_noise(2, model.spec.latent_shape, seed=3))
    assert images.shape == (2, 3, RESOLUTION, RESOLUTION) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0


def test_prompt_embeddings_are_computed_once_per_prompt(folder):
    model = flux.load(folder, torch.device("cpu"), torch.float32, resolution=RESOLUTION)
    x = unit_noise(3, model.spec.latent_shape, seed=4)
    conditions = [RowCondition(prompt=PROMPT, guidance=3.5), RowCondition(prompt="a dog", guidance=3.5),
                  RowCondition(prompt=PROMPT, guidance=1.0)]
    model.x0(x, 0.9, conditions)
    assert (model.prompts.misses, model.prompts.hits, len(model.prompts)) == (2, 1, 2)
    model.x0(x, 0.4, conditions)
    assert (model.prompts.misses, model.prompts.hits) == (2, 4)


def test_identity_follows_resolution_and_weights(folder, model, tmp_path):
    def identity(root, resolution=RESOLUTION):
        return flux.load(root, torch.device("cpu"), torch.float32, resolution=resolution).spec.identity

    assert identity(folder) == model.spec.identity
    assert identity(folder, resolution=64) != model.spec.identity
    other = tmp_path / "other"
    flux.save_tiny(other, seed=1)
    assert identity(other) != model.spec.identity


def test_sharded_weights_load_like_the_released_transformer_and_t5(folder, model, tmp_path):
    """The released transformer/ and text_encoder_2/ are sharded behind a .safetensors.index.json."""
    from diffusers import FluxTransformer2DModel
    from transformers import T5EncoderModel

    sharded = tmp_path / "sharded"
    shutil.copytree(folder, sharded)
    for component, cls, single in (("transformer", FluxTransformer2DModel, "diffusion_pytorch_model.safetensors"),
                                   ("text_encoder_2", T5EncoderModel, "model.safetensors")):
        network = cls.from_pretrained(str(folder / component), local_files_only=True)
        (sharded / component / single).unlink()
        network.save_pretrained(str(sharded / component), max_shard_size="20KB", safe_serialization=True)
        assert (sharded / component / f"{single}.index.json").exists()
    x = unit_noise(1, model.spec.latent_shape, seed=5)
    condition = [RowCondition(prompt=PROMPT, guidance=3.5)]
    loaded = flux.load(sharded, torch.device("cpu"), torch.float32, resolution=RESOLUTION)
    # The same numbers, though not always the same bits: shards load at other alignments, and a kernel may
    # then take another vector path.
    torch.testing.assert_close(loaded.x0(x, 0.5, condition), model.x0(x, 0.5, condition), rtol=1e-6, atol=1e-6)

    shard = sorted((sharded / "transformer").glob("diffusion_pytorch_model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(ConfigError, match="transformer/"):
        flux.load(sharded, torch.device("cpu"), torch.float32, resolution=RESOLUTION)


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        flux.load(tmp_path / "nowhere", torch.device("cpu"), torch.float32)


def test_incomplete_folder_names_every_missing_file(folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "vae")
    (broken / "tokenizer_2" / "tokenizer.json").unlink()
    with pytest.raises(ConfigError) as caught:
        flux.load(broken, torch.device("cpu"), torch.float32, resolution=RESOLUTION)
    message = str(caught.value)
    for missing in ("vae/config.json", "vae/diffusion_pytorch_model.safetensors", "tokenizer_2/tokenizer.json"):
        assert missing in message
    assert "transformer/" not in message


def test_resolution_must_fit_the_packing(folder):
    with pytest.raises(ConfigError, match="multiple of 16"):
        flux.load(folder, torch.device("cpu"), torch.float32, resolution=40)
