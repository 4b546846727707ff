"""PyTorch models in a real tritonserver (pb_torch.py, in a repository written by repository.py from tiny
random-weight folders): a SiT denoiser, its decoder and a class verifier compute what the native torch backend
computes in this process, with Triton's dynamic batcher merging concurrent requests at different noise levels
into one execution, where a noise level whose rows make the network raise fails only its own request; a
configuration whose parameters describe another model leaves that model not ready,
naming the right value; bad command lines are one line; the committed FLUX.1-dev example repository is what
repository.py writes for the released FLUX.1-dev at 1024 px."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
triton_grpc = pytest.importorskip("tritonclient.grpc")

from PIL import Image  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from noisesearch_server.backend import ModelSpec, RowCondition, Rows  # noqa: E402
from noisesearch_server.proto import load  # noqa: E402
from noisesearch_server.server import parse_args, start_server  # noqa: E402
from noisesearch_server.torchmodels import flux, registry  # noqa: E402
from noisesearch_server.triton import repository  # noqa: E402
from noisesearch_server.triton.launch import REPO_ROOT, SETUP_HINT, start_triton, wait_ready  # noqa: E402

torch.set_num_threads(1)

if not (REPO_ROOT / ".venv-triton" / "bin" / "python").exists():
    pytest.skip(f"no .venv-triton: {SETUP_HINT}", allow_module_level=True)

DEADLINE_S = 30.0
# Four stubs each import torch and diffusers (about 10 s of one core each) on a two-core machine.
START_S = 120.0
MODELS = ("sit_denoiser", "sit_decoder", "dino_imagenet")
MISDECLARED = "sit_denoiser_misdeclared"
# Two requests of 2 and 3 rows fill the preferred batch of 5, so the dynamic batcher merges them into one
# execution at once; the long queue delay only makes sure the first waits for the second.
PREFERRED = 5
QUEUE_DELAY_US = 2_000_000
# float32 networks on one thread in both processes, the same torch build and weights; only the batch differs: a
# merged batch of 5 rows against the native call's 2 or 3 (and the decoder's chunks of 4: [4, 1] against [3])
# may pick another convolution or GEMM blocking, which reorders float32 sums. Measured: denoiser and verifier
# bit-identical, decoder images in [0, 1] within 4.8e-7 (a few ulps); 1e-5 leaves a 20x margin, while a wrong
# sigma group, row order or condition moves values by 1e-1 or more (checked below for sigma).
ATOL = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    for name in ("sit", "dino-imagenet"):
        registry.save_tiny(name, root / name)
    return {name: root / name for name in ("sit", "dino-imagenet")}


@pytest.fixture(scope="module")
def native(folders):
    model = registry.load_model("sit", folders["sit"], "cpu", "float32", None)
    return model, registry.load_verifiers({"dino-imagenet": folders["dino-imagenet"]}, model, "float32")[0]


@pytest.fixture(scope="module")
def triton(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("repository")
    assert repository.main([
        "--out", str(out), "--model", f"sit={folders['sit']}",
        "--verifier", f"dino-imagenet={folders['dino-imagenet']}", "--kind", "cpu", "--max-batch", "8",
        "--preferred-batch", str(PREFERRED), "--max-queue-delay-us", str(QUEUE_DELAY_US),
    ]) == 0
    # A hand-edited copy: the weights give schedule_shift 1.0 (SiT steps uniformly in t).
    shutil.copytree(out / "sit_denoiser", out / MISDECLARED)
    config = out / MISDECLARED / "config.pbtxt"
    text, edits = re.subn(r'(key: "schedule_shift" value: \{ string_value: )"1.0"', r'\1"3.0"', config.read_text())
    text, renames = re.subn(r'^name: "sit_denoiser"', f'name: "{MISDECLARED}"', text, flags=re.M)
    assert edits == 1 and renames == 1
    config.write_text(text)
    with pytest.MonkeyPatch.context() as patch:
        # The stubs inherit it: one torch thread, as in this process, so both pick the same kernels.
        patch.setenv("OMP_NUM_THREADS", "1")
        server = start_triton(
            out, log_path=out.parent / "tritonserver.log", wait_s=START_S,
            extra_args=["--exit-on-error=false", "--strict-readiness=false"],
        )
    try:
        wait_ready(server.grpc_address, MODELS, timeout_s=START_S)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(triton):
    client = triton_grpc.InferenceServerClient(triton.grpc_address)
    yield client
    client.close()


def tensor(name: str, values: np.ndarray):
    datatype = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64"}[values.dtype]
    found = triton_grpc.InferInput(name, list(values.shape), datatype)
    found.set_data_from_numpy(values)
    return found


def column(values, dtype) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(-1, 1)


def executions(client, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model, as_json=True, client_timeout=DEADLINE_S)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def concurrently(client, model: str, requests: list[list]) -> list:
    """The requests sent at once; asserts Triton ran them as one execution of all their rows. Each result is
    Triton's answer, or the InferenceServerException it raised for that request."""

    def infer(inputs):
        try:
            return client.infer(model, inputs, client_timeout=DEADLINE_S)
        except InferenceServerException as error:
            return error

    rows_before, runs_before = executions(client, model)
    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(infer, requests))
    rows_after, runs_after = executions(client, model)
    assert (rows_after - rows_before, runs_after - runs_before) == (PREFERRED, 1), "the batcher did not merge them"
    return results


# Two requests the batcher merges: 2 rows at sigma 0.8, 3 at 0.3; classes, an unconditional row, and guidance
# 1.5 (SiT's default, which guides the first three channels), 1 (conditional only) and 4.
REQUESTS = [
    (0.8, [RowCondition(3, guidance=1.5), RowCondition(None, guidance=1.5)]),
    (0.3, [RowCondition(7, guidance=1.0), RowCondition(0, guidance=4.0), RowCondition(9, guidance=1.5)]),
]


def latents(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 4, 8, 8)).astype(np.float32)


def denoiser_inputs(x: np.ndarray, sigma: float, conditions: list[RowCondition]) -> list:
    return [
        tensor("x", x),
        tensor("sigma", np.full((len(x), 1), sigma)),
        tensor("class_label", column([-1 if c.class_label is None else c.class_label for c in conditions], np.int64)),
        tensor("guidance", column([c.guidance for c in conditions], np.float64)),
    ]


def native_x0(model, x: np.ndarray, sigma: float, conditions: list[RowCondition]) -> np.ndarray:
    """What the native engine computes for the same request: its own denoise call over these rows alone."""
    return model.denoise(x.reshape(len(x), -1).astype(np.float64), sigma, Rows(conditions))


def test_denoiser_merges_requests_and_equals_the_native_model(client, native):
    model, _ = native
    xs = [latents(len(conditions), seed) for seed, (_, conditions) in enumerate(REQUESTS)]
    results = concurrently(client, "sit_denoiser", [
        denoiser_inputs(x, sigma, conditions) for x, (sigma, conditions) in zip(xs, REQUESTS)
    ])
    for result, x, (sigma, conditions) in zip(results, xs, REQUESTS):
        x0 = result.as_numpy("x0")
        assert x0.dtype == np.float32 and x0.shape == (len(conditions), 4, 8, 8)
        np.testing.assert_allclose(x0.reshape(len(x0), -1), native_x0(model, x, sigma, conditions), rtol=0, atol=ATOL)
    # Each request's rows were denoised at their own sigma: at the other request's the values differ.
    wrong_sigma = native_x0(model, xs[0], REQUESTS[1][0], REQUESTS[0][1])
    assert np.abs(wrong_sigma - native_x0(model, xs[0], *REQUESTS[0])).max() > 100 * ATOL


def test_a_failing_sigma_group_fails_only_its_request(client, native):
    model, _ = native
    (sigma, conditions), (other_sigma, other) = REQUESTS
    # SiT's tiny model has 10 classes: label 10 makes the network code raise, in the 0.3 group only.
    bad = [other[0], RowCondition(10, guidance=1.5), other[2]]
    x, y = latents(2, 20), latents(3, 21)
    good, failed = concurrently(client, "sit_denoiser", [
        denoiser_inputs(x, sigma, conditions), denoiser_inputs(y, other_sigma, bad),
    ])
    np.testing.assert_allclose(good.as_numpy("x0").reshape(2, -1), native_x0(model, x, sigma, conditions),
                               rtol=0, atol=ATOL)
    assert isinstance(failed, InferenceServerException)
    assert failed.status() == "StatusCode.INTERNAL"
    assert "SiT: class label 10 is outside [0, 10)" in failed.message()


def test_decoder_and_verifier_equal_the_native_model(client, native):
    model, verifier = native
    first, second = latents(2, 10), latents(3, 11)
    decoded = concurrently(client, "sit_decoder", [[tensor("latents", first)], [tensor("latents", second)]])
    images = [result.as_numpy("images") for result in decoded]
    for got, x in zip(images, (first, second)):
        want = model.decode(x.reshape(len(x), -1).astype(np.float64)).numpy()
        assert got.dtype == np.float32 and got.shape == (len(x), 3, 16, 16)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    labels = [np.array([1, 4]), np.array([0, 9, 5])]
    scored = concurrently(client, "dino_imagenet", [
        [tensor("samples", picture), tensor("class_label", column(label, np.int64))]
        for picture, label in zip(images, labels)
    ])
    for result, picture, label in zip(scored, images, labels):
        score = result.as_numpy("score")
        want = verifier.score(torch.from_numpy(picture.copy()), Rows.of_labels(label), None)
        assert score.dtype == np.float64 and score.shape == (len(label), 1)
        np.testing.assert_allclose(score[:, 0], want, rtol=0, atol=ATOL)


def test_a_configuration_describing_another_model_is_not_ready(client):
    assert not client.is_model_ready(MISDECLARED, client_timeout=DEADLINE_S)
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True, client_timeout=DEADLINE_S)["models"]}
    assert index[MISDECLARED]["state"] == "UNAVAILABLE"
    assert 'schedule_shift: "3.0" -> "1.0"' in index[MISDECLARED]["reason"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "sit"], "repository: --model: got 'sit'; want NAME=WEIGHTS"),
        (["--model", "sit=/w", "--max-batch", "4", "--preferred-batch", "4,8"],
         "repository: --preferred-batch: got '4,8'; want sizes like 4,8, each between 1 and --max-batch 4"),
        (["--model", "dit=/w"], "repository: --model: unknown model 'dit'"),
        (["--model", "sit=/nowhere/sit"], "repository: SiT: folder '/nowhere/sit' does not exist"),
    ],
)
def test_bad_command_lines_are_one_line(tmp_path, capsys, argv, message):
    assert repository.main(["--out", str(tmp_path / "repository"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "repository").exists()


def test_a_prompt_verifier_beside_a_class_model_is_refused(tmp_path, capsys, folders):
    argv = ["--out", str(tmp_path), "--model", f"sit={folders['sit']}", "--verifier", "clip-score=/w", "--kind", "cpu"]
    assert repository.main(argv) == 2
    assert capsys.readouterr().err == (
        "repository: --verifier clip-score: it scores against a prompt, and model 'sit' takes classes\n"
    )


# --- The committed example: FLUX.1-dev at 1024 px with clip-score and aesthetic ----------------------------------

EXAMPLE = REPO_ROOT / "deploy" / "triton" / "pytorch"
# black-forest-labs/FLUX.1-dev as released: scheduler/scheduler_config.json, and what the spec reads from
# transformer/config.json (in_channels 64: 16 latent channels packed 2x2; guidance_embeds true) and vae/config.json
# (four block_out_channels: 8x downsampling).
RELEASED_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
    "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
    "use_dynamic_shifting": True,
}
RESOLUTION, CHANNELS, VAE_SCALE = 1024, 64 // 4, 8
# The identity ends in a digest of the weights folder, unknowable without it: the denoiser refuses to load
# naming the real one until repository.py is run against the weights (deploy/triton/README.md).
DIGEST = "FOLDER_DIGEST"


def released_flux_spec() -> ModelSpec:
    """What flux.load gives for the released folder at 1024 px in bfloat16 (the GPU default), but the digest."""
    side = RESOLUTION // VAE_SCALE
    return ModelSpec(
        name=flux.WHAT, latent_shape=(CHANNELS, side, side), sigma_min=flux.SIGMA_MIN, sigma_max=1.0, rho=1.0,
        num_classes=0, default_solver="euler", default_steps=flux.DEFAULT_STEPS,
        default_guidance_scale=flux.DEFAULT_GUIDANCE,
        identity=f"{flux.WHAT}-{RESOLUTION}px-{flux.DEFAULT_MAX_SEQUENCE_LENGTH}tok-bfloat16-{DIGEST}",
        process="flow", schedule="shifted", schedule_shift=flux.schedule_shift(RELEASED_SCHEDULER, (side // 2) ** 2),
        takes_prompts=True, image_shape=(3, RESOLUTION, RESOLUTION),
    )


def example_configs(tmp_path: Path) -> list[repository.ModelConfig]:
    # The verifiers' parameters do not depend on their weights: tiny folders give the released ones'.
    verifiers = []
    for name, weights in (("clip-score", "/weights/clip-vit-large-patch14"), ("aesthetic", "/weights/aesthetic")):
        registry.save_tiny(name, tmp_path / name)
        verifiers.append((name, weights, registry.load_verifier(name, tmp_path / name, "cpu", "float32").spec))
    return repository.model_configs("flux", "/weights/FLUX.1-dev", RESOLUTION, "bfloat16", released_flux_spec(),
                                    verifiers)


def test_the_flux_example_is_what_repository_writes(tmp_path):
    """NOISESEARCH_WRITE_EXAMPLE=1 rewrites deploy/triton/pytorch instead of comparing."""
    configs = example_configs(tmp_path)
    batching = repository.Batching(max_batch=16, preferred=(4, 8), max_queue_delay_us=2000)
    if os.environ.get("NOISESEARCH_WRITE_EXAMPLE") == "1":
        repository.write(EXAMPLE, configs, batching)
    written = tmp_path / "example"
    repository.write(written, configs, batching)

    def files(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts}

    assert files(EXAMPLE) == files(written), "regenerate: NOISESEARCH_WRITE_EXAMPLE=1 pytest tests/test_triton_torch.py"
    # Independently of our code: FLUX.1-dev's 1024 px is 64x64 = 4096 packed tokens, the scheduler's
    # max_image_seq_len, so the dynamic shift is exp(max_shift) = e^1.15.
    config = (EXAMPLE / "flux_denoiser" / "config.pbtxt").read_text()
    shift = float(re.search(r'key: "schedule_shift" value: \{ string_value: "([^"]+)"', config).group(1))
    assert math.isclose(shift, math.exp(1.15), rel_tol=1e-12)
    assert '{ name: "x" data_type: TYPE_FP32 dims: [ 16, 128, 128 ] }' in config
    assert json.dumps("flux_decoder") in config


async def test_a_search_server_over_triton_equals_the_native_torch_server(triton, folders):
    """The whole path: a noisesearch server whose networks are the Triton models evaluates SiT candidates as the
    native torch server does: same NFEs, scores and pictures. Five candidates fill the preferred batch, so each
    call executes at once and with the rows the native engine batches."""
    pb, services = load()
    common = ["--port", "0", "--batch-window-ms", "0", "--max-batch", str(PREFERRED)]
    native_server = await start_server(parse_args([
        *common, "--device", "cpu", "--dtype", "float32", "--model", f"sit={folders['sit']}",
        "--verifier", f"dino-imagenet={folders['dino-imagenet']}",
    ]))
    remote_server = await start_server(parse_args([
        *common, "--triton", triton.grpc_address, "--triton-wait", "10",
        "--model", "sit@triton:sit_denoiser", "--verifier", "dino-imagenet@triton:dino_imagenet",
    ]))
    request = pb.EvaluateRequest(model="sit", verifiers=["dino-imagenet"], return_samples=True)
    for seed in range(PREFERRED):
        message = request.candidates.add(id=f"c{seed}", condition=pb.Condition(class_label=seed % 3))
        message.lineage.noise.seed = seed
        message.lineage.ops.add().solve.CopyFrom(pb.Solve(sigma_from=1.0, sigma_to=0.0, solver="heun", steps=3))
    answers = []
    try:
        for running in (native_server, remote_server):
            async with grpc.aio.insecure_channel(running.address) as channel:
                answers.append(await services.DenoiserStub(channel).Evaluate(request, timeout=DEADLINE_S * 4))
    finally:
        await native_server.stop()
        await remote_server.stop()
    native_answer, remote_answer = answers
    for expected, got in zip(native_answer.results, remote_answer.results, strict=True):
        assert not expected.HasField("error") and not got.HasField("error"), (expected.error, got.error)
        assert (got.id, got.nfe_logical, got.nfe_executed) == (expected.id, 5, 5)
        assert got.scores["dino-imagenet"] == pytest.approx(expected.scores["dino-imagenet"], abs=ATOL)
        pictures = [np.asarray(Image.open(io.BytesIO(r.image)), dtype=np.int16) for r in (expected, got)]
        # The decoder's few-ulp differences can move a pixel across a rounding boundary, never further.
        assert np.abs(pictures[0] - pictures[1]).max() <= 1
