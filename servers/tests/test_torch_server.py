"""Real-model servers end to end over gRPC: tiny random-weight folders, written by the same save_tiny a user can
run, loaded through the server's own command line, evaluated, scored, refused."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from noisesearch_server.backend import ConfigError
from noisesearch_server.proto import load
from noisesearch_server.server import build_backend, parse_args, start_server
from noisesearch_server.torchmodels.registry import save_tiny

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    for name in (
        "sit", "flux", "sdxl", "pixart-sigma", "dino-imagenet", "selfsup", "clip-score", "aesthetic", "pickscore",
        "clip-imagenet", "imagereward",
    ):
        save_tiny(name, root / name)
    return root


async def serve(argv):
    config = parse_args(["--port", "0", "--batch-window-ms", "0", "--device", "cpu", *argv])
    running = await start_server(config)
    channel = grpc.aio.insecure_channel(running.address)
    return running, channel, load()[1].DenoiserStub(channel), load()[0]


def candidate(pb, seed, condition, steps=3, sigma_to=0.0, solver="heun"):
    message = pb.Candidate(id=f"c{seed}", condition=condition)
    message.lineage.noise.seed = seed
    message.lineage.ops.add().solve.CopyFrom(pb.Solve(sigma_from=1.0, sigma_to=sigma_to, solver=solver, steps=steps))
    return message


def picture(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


async def test_a_class_model_evaluates_scores_and_returns_pictures(folders):
    running, channel, denoiser, pb = await serve([
        "--model", f"sit={folders / 'sit'}", "--verifier", f"dino-imagenet={folders / 'dino-imagenet'}",
        "--verifier", f"selfsup={folders / 'selfsup'}",
    ])
    try:
        described = await denoiser.Describe(pb.DescribeRequest())
        assert (described.process, described.schedule, described.schedule_shift) == ("flow", "shifted", 1.0)
        assert not described.takes_prompts and described.num_classes == 10
        height, width = described.image_shape[1:]
        request = pb.EvaluateRequest(
            model=described.model, verifiers=["dino-imagenet", "selfsup"], return_samples=True,
            candidates=[candidate(pb, seed, pb.Condition(class_label=seed)) for seed in (1, 2)],
        )
        first = await denoiser.Evaluate(request)
        for result in first.results:
            assert not result.HasField("error"), result.error
            assert set(result.scores) == {"dino-imagenet", "selfsup"}
            # Heun, 3 steps to 0: 2 * 3 - 1 evaluations.
            assert (result.nfe_logical, result.nfe_executed) == (5, 5)
            assert picture(result.image).shape == (height, width, 3) and len(result.sample) == 0
        assert first.results[0].image != first.results[1].image
        # Same recipes again: every state comes from the cache, and every number and picture is the same.
        again = await denoiser.Evaluate(request)
        assert again.cache_hits == 2
        for before, after in zip(first.results, again.results):
            assert dict(after.scores) == dict(before.scores) and after.image == before.image
            assert after.nfe_executed == 0
        # And with the cache cold, from a fresh server: still bit-identical.
        fresh, fresh_channel, fresh_denoiser, _ = await serve([
            "--model", f"sit={folders / 'sit'}", "--verifier", f"dino-imagenet={folders / 'dino-imagenet'}",
            "--verifier", f"selfsup={folders / 'selfsup'}",
        ])
        try:
            cold = await fresh_denoiser.Evaluate(request)
            assert [dict(r.scores) for r in cold.results] == [dict(r.scores) for r in first.results]
            assert [r.image for r in cold.results] == [r.image for r in first.results]
        finally:
            await fresh_channel.close()
            await fresh.stop(grace=0.1)

        prompt = await denoiser.Evaluate(pb.EvaluateRequest(candidates=[candidate(pb, 3, pb.Condition(prompt="a cat"))]))
        assert prompt.results[0].error.code == "INVALID_ARGUMENT"
        assert prompt.results[0].error.message.startswith("candidates[0].condition.prompt: this model takes no text prompt")
        assert prompt.results[0].nfe_executed == 0
    finally:
        await channel.close()
        await running.stop(grace=0.1)


async def test_a_text_model_takes_prompts_and_refuses_classes(folders):
    running, channel, denoiser, pb = await serve([
        "--model", f"flux={folders / 'flux'}", "--verifier", f"clip-score={folders / 'clip-score'}",
        "--verifier", f"aesthetic={folders / 'aesthetic'}", "--resolution", "32",
    ])
    try:
        described = await denoiser.Describe(pb.DescribeRequest())
        assert described.takes_prompts and described.default_steps == 30 and described.default_guidance_scale == 3.5
        prompts = ["a red cube on a blue sphere", "a photo of a cat"]
        response = await denoiser.Evaluate(pb.EvaluateRequest(
            verifiers=["clip-score", "aesthetic"], return_samples=True,
            candidates=[candidate(pb, i, pb.Condition(prompt=p), steps=2, solver="euler") for i, p in enumerate(prompts)],
        ))
        for result in response.results:
            assert not result.HasField("error"), result.error
            assert set(result.scores) == {"clip-score", "aesthetic"} and result.nfe_logical == 2
            assert picture(result.image).shape[2] == 3
        refused = await denoiser.Evaluate(pb.EvaluateRequest(
            verifiers=["clip-score"], candidates=[
                candidate(pb, 7, pb.Condition(class_label=3)), candidate(pb, 8, pb.Condition()),
            ],
        ))
        assert refused.results[0].error.message.startswith(
            "candidates[0].condition.class_label: got 3; this text-to-image model takes prompts, not classes"
        )
        assert refused.results[1].error.message == (
            "candidates[1].condition: verifier 'clip-score' needs a condition; set condition.prompt"
        )
        assert all(r.nfe_executed == 0 for r in refused.results)

        # The PNG a result carried scores the same through Score as inside Evaluate.
        verifier = load()[1].VerifierStub(channel)
        scored = await verifier.Score(pb.ScoreRequest(verifiers=["clip-score", "aesthetic"], samples=[
            pb.Sample(image=r.image, condition=pb.Condition(prompt=p)) for r, p in zip(response.results, prompts)
        ]))
        for result, again in zip(response.results, scored.results):
            # Scored from 8-bit pixels rather than floats: close, not equal.
            for name in ("clip-score", "aesthetic"):
                assert again.scores[name] == pytest.approx(result.scores[name], abs=0.02)
        with pytest.raises(grpc.aio.AioRpcError) as bad_png:
            await verifier.Score(pb.ScoreRequest(verifiers=["aesthetic"], samples=[pb.Sample(image=b"not a png")]))
        assert bad_png.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_png.value.details().startswith("samples[0].image: not a readable PNG")
    finally:
        await channel.close()
        await running.stop(grace=0.1)


@pytest.mark.parametrize(
    ("model", "verifiers", "condition"),
    [
        ("sdxl", ("pickscore", "imagereward"), {"prompt": "a corgi on a skateboard", "negative_prompt": "blurry"}),
        ("pixart-sigma", ("clip-score", "aesthetic"), {"prompt": "a bowl of ramen"}),
        ("sit", ("clip-imagenet", "dino-imagenet"), {"class_label": 4}),
    ],
)
async def test_every_model_and_verifier_serves_bit_identical_results_warm_and_cold(folders, model, verifiers, condition):
    argv = ["--model", f"{model}={folders / model}", *[a for v in verifiers for a in ("--verifier", f"{v}={folders / v}")]]
    running, channel, denoiser, pb = await serve(argv)
    try:
        described = await denoiser.Describe(pb.DescribeRequest())
        sigma_max = described.sigma_max
        candidates = []
        for seed in (11, 12):
            message = candidate(pb, seed, pb.Condition(**condition), steps=2, solver="euler")
            message.lineage.ops[0].solve.sigma_from = sigma_max
            candidates.append(message)
        request = pb.EvaluateRequest(verifiers=list(verifiers), return_samples=True, candidates=candidates)
        warm_up = await denoiser.Evaluate(request)
        cached = await denoiser.Evaluate(request)
    finally:
        await channel.close()
        await running.stop(grace=0.1)
    cold_server, cold_channel, cold_denoiser, _ = await serve(argv)
    try:
        cold = await cold_denoiser.Evaluate(request)
    finally:
        await cold_channel.close()
        await cold_server.stop(grace=0.1)
    assert cached.cache_hits == 2 and cold.cache_hits == 0
    for first, again, fresh in zip(warm_up.results, cached.results, cold.results):
        assert not first.HasField("error"), first.error
        assert set(first.scores) == set(verifiers) and first.nfe_logical == 2
        assert picture(first.image).shape == (described.image_shape[1], described.image_shape[2], 3)
        for other in (again, fresh):
            assert dict(other.scores) == dict(first.scores) and other.image == first.image
    assert warm_up.results[0].image != warm_up.results[1].image


def test_a_missing_torch_extra_names_the_command_that_installs_it(folders, monkeypatch):
    import importlib.util

    from noisesearch_server import server

    real = importlib.util.find_spec
    monkeypatch.setattr(server.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(ConfigError) as refused:
        build_backend(parse_args(["--model", f"flux={folders / 'flux'}"]))
    assert str(refused.value).endswith("PyTorch models need the torch extra; run pip install -e 'servers[torch]' "
                                       "(in the project's .venv: npm test installs it)")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--model", "flux={missing}"], "does not exist"),
        (["--model", "sit={weights}/sit", "--verifier", "clip-score={weights}/clip-score"],
         "--verifier clip-score: it scores against a prompt, and model 'sit' takes classes"),
        (["--model", "flux={weights}/flux", "--verifier", "dino-imagenet={weights}/dino-imagenet"],
         "--verifier dino-imagenet: it scores against a class, and model 'flux' has none"),
        (["--model", "flux={weights}/flux", "--verifier", "no-such={weights}/aesthetic"], "unknown verifier 'no-such'"),
        (["--model", "flux={weights}/flux", "--resolution", "100"], "100"),
        (["--model", "sit={weights}/flux"], "missing SiT-XL-2-256x256.pt or model.safetensors"),
        (["--model", "nosuch={weights}/flux"], "unknown model 'nosuch'"),
        (["--model", "sit={weights}/sit", "--resolution", "512"], "SiT: unknown options ['resolution']"),
    ],
)
def test_bad_folders_and_pairings_are_refused_at_start(folders, tmp_path, argv, fragment):
    argv = [a.format(weights=folders, missing=tmp_path / "absent") for a in argv]
    with pytest.raises(ConfigError) as refused:
        build_backend(parse_args(["--device", "cpu", *argv]))
    assert fragment in str(refused.value)
    assert "\n" not in str(refused.value)


async def test_population_metrics_of_pictures_against_a_reference(folders, tmp_path):
    from noisesearch_server.torchmodels.image_metrics import (
        ImagePopulationMetrics, save_random_fid_inception, save_tiny_clip,
    )

    inception, clip = tmp_path / "pt_inception-2015-12-05-6726825d.pth", tmp_path / "clip"
    save_random_fid_inception(inception)
    save_tiny_clip(clip)
    plain, channel, denoiser, pb = await serve(["--model", f"sit={folders / 'sit'}"])
    try:
        response = await denoiser.Evaluate(pb.EvaluateRequest(
            return_samples=True, candidates=[candidate(pb, seed, pb.Condition(class_label=seed % 10)) for seed in range(4)],
        ))
        pictures = [r.image for r in response.results]
        verifier = load()[1].VerifierStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unconfigured:
            await verifier.Population(pb.PopulationRequest(samples=[pb.Sample(image=p) for p in pictures]))
        assert unconfigured.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "--fid-inception FILE --fid-reference NPZ" in unconfigured.value.details()
    finally:
        await channel.close()
        await plain.stop(grace=0.1)

    # Reference statistics written from the very same pictures: both distances are then 0 up to rounding.
    metrics = ImagePopulationMetrics.load(inception, None, clip, None, torch.device("cpu"), torch.float32)
    images = torch.stack([torch.from_numpy(picture(p).copy()).permute(2, 0, 1).float() / 255 for p in pictures])
    metrics.write_reference(images, tmp_path / "fid.npz", tmp_path / "clip.npz")
    running, channel, _, pb = await serve([
        "--model", f"sit={folders / 'sit'}", "--fid-inception", str(inception), "--fid-reference", str(tmp_path / "fid.npz"),
        "--clip-fid", str(clip), "--clip-fid-reference", str(tmp_path / "clip.npz"),
    ])
    try:
        verifier = load()[1].VerifierStub(channel)
        same = await verifier.Population(pb.PopulationRequest(samples=[pb.Sample(image=p) for p in pictures]))
        assert (same.samples, same.reference_samples, same.feature_dim) == (4, 4, 2048)
        assert abs(same.frechet_distance) < 1e-3 and abs(same.clip_frechet_distance) < 1e-3
        assert same.inception_score >= 1.0
        # Half the set against the whole: a positive distance.
        half = await verifier.Population(pb.PopulationRequest(samples=[pb.Sample(image=p) for p in pictures[:2]]))
        assert half.frechet_distance > 1e-3 and half.clip_frechet_distance > 1e-3
    finally:
        await channel.close()
        await running.stop(grace=0.1)
