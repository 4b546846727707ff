"""deploy/triton/gmm in a real tritonserver (started from .venv-triton by noisesearch_server.triton.launch):
every model loads, computes what the native mixture computes in this process, and a configuration that
describes another model keeps that model from loading."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

triton_grpc = pytest.importorskip("tritonclient.grpc")

from tritonclient.utils import InferenceServerException  # noqa: E402

from noisesearch_server.backend import RowCondition, Rows  # noqa: E402
from noisesearch_server.gmm import GaussianMixture, GmmConfig, gmm_verifiers  # noqa: E402
from noisesearch_server.triton.launch import REPO_ROOT, SETUP_HINT, start_triton, wait_ready  # noqa: E402

REPOSITORY = REPO_ROOT / "deploy" / "triton" / "gmm"
MODELS = ("gmm_denoiser", "gmm_oracle", "gmm_classifier", "gmm_selfsup")
VERIFIER_MODELS = {"gmm-oracle": "gmm_oracle", "gmm-classifier": "gmm_classifier", "gmm-selfsup": "gmm_selfsup"}
DEADLINE_S = 10.0

if not (REPO_ROOT / ".venv-triton" / "bin" / "python").exists():
    pytest.skip(f"no .venv-triton: {SETUP_HINT}", allow_module_level=True)


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    server = start_triton(REPOSITORY, log_path=tmp_path_factory.mktemp("triton") / "tritonserver.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(triton):
    client = triton_grpc.InferenceServerClient(triton.grpc_address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    return GaussianMixture(GmmConfig())


def tensor(name: str, values: np.ndarray):
    datatype = {np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64"}[values.dtype]
    found = triton_grpc.InferInput(name, list(values.shape), datatype)
    found.set_data_from_numpy(values)
    return found


def column(values) -> np.ndarray:
    return np.asarray(values).reshape(-1, 1)


# Five rows: a class at guidance 1 (plain conditional), unconditional, classes under guidance 2.5, and an
# unconditional row at 2.5 (guidance does not apply to it).
LABELS = np.array([3, -1, 7, 0, -1], dtype=np.int64)
GUIDANCE = np.array([1.0, 1.0, 2.5, 2.5, 2.5])
SIGMA = 3.0


def noisy_rows(mixture: GaussianMixture) -> np.ndarray:
    rng = np.random.default_rng(2024)
    clean = mixture.sample(np.abs(LABELS), rng)
    return clean + SIGMA * rng.standard_normal(clean.shape)


def test_every_model_is_ready(triton):
    wait_ready(triton.grpc_address, MODELS, timeout_s=DEADLINE_S)


def test_denoiser_equals_the_native_mixture(client, mixture):
    x = noisy_rows(mixture)
    result = client.infer(
        "gmm_denoiser",
        [
            tensor("x", x),
            tensor("sigma", np.full((len(x), 1), SIGMA)),
            tensor("class_label", column(LABELS)),
            tensor("guidance", column(GUIDANCE)),
        ],
        client_timeout=DEADLINE_S,
    )
    rows = Rows([RowCondition(None if label < 0 else int(label), guidance=float(w)) for label, w in zip(LABELS, GUIDANCE)])
    expected = mixture.denoise(x, SIGMA, rows)
    x0 = result.as_numpy("x0")
    assert x0.dtype == np.float64 and x0.shape == x.shape
    # Bit for bit, though Triton's stub runs numpy 1.26.4 and this process numpy 2.4.6: gmm.py reduces every row
    # with elementwise products and fixed-order sums, never BLAS, and both numpys run the same elementwise loops
    # (measured identical over 200 random requests of 1 to 299 rows, sigma 0.02 to 40, guidance 0 to 4).
    assert np.array_equal(x0, expected), f"max abs difference {np.abs(x0 - expected).max()}"
    assert not np.array_equal(x0, x), "the denoiser must move the rows"


@pytest.mark.parametrize("verifier", sorted(VERIFIER_MODELS))
def test_verifier_equals_the_native_mixture(client, mixture, verifier):
    native = {v.spec.name: v for v in gmm_verifiers(mixture)}[verifier]
    samples = mixture.sample(np.abs(LABELS), np.random.default_rng(7))
    probes = samples + 0.3 * np.random.default_rng(8).standard_normal(samples.shape)
    labels = np.abs(LABELS)
    if verifier == "gmm-selfsup":
        inputs = [tensor("samples", samples), tensor("probes", probes)]
    else:
        inputs = [tensor("samples", samples), tensor("class_label", column(labels))]
    score = client.infer(VERIFIER_MODELS[verifier], inputs, client_timeout=DEADLINE_S).as_numpy("score")
    expected = native.score(samples, Rows.of_labels(labels), probes)
    assert score.dtype == np.float64 and score.shape == (len(samples), 1)
    # Bit for bit, for the reason the denoiser's test gives.
    assert np.array_equal(score[:, 0], expected), f"max abs difference {np.abs(score[:, 0] - expected).max()}"


def test_wrong_dims_are_an_invalid_argument(client):
    rows = 2
    with pytest.raises(InferenceServerException) as raised:
        client.infer(
            "gmm_denoiser",
            [
                tensor("x", np.zeros((rows, 8))),
                tensor("sigma", np.full((rows, 1), SIGMA)),
                tensor("class_label", np.zeros((rows, 1), dtype=np.int64)),
                tensor("guidance", np.ones((rows, 1))),
            ],
            client_timeout=DEADLINE_S,
        )
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unexpected shape for input 'x'" in raised.value.message()


def test_a_configuration_describing_another_model_does_not_load(tmp_path):
    repository = tmp_path / "gmm"
    shutil.copytree(REPOSITORY, repository, ignore=shutil.ignore_patterns("__pycache__"))
    config = repository / "gmm_denoiser" / "config.pbtxt"
    edited, count = re.subn(
        r'(key: "sigma_max" value: \{ string_value: )"40.0"', r'\1"80.0"', config.read_text()
    )
    assert count == 1
    config.write_text(edited)
    server = start_triton(
        repository, log_path=tmp_path / "tritonserver.log",
        extra_args=["--exit-on-error=false", "--strict-readiness=false"],
    )
    client = triton_grpc.InferenceServerClient(server.grpc_address)
    try:
        wait_ready(server.grpc_address, [m for m in MODELS if m != "gmm_denoiser"], timeout_s=DEADLINE_S)
        assert not client.is_model_ready("gmm_denoiser", client_timeout=DEADLINE_S)
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True, client_timeout=DEADLINE_S)["models"]}
        assert index["gmm_denoiser"]["state"] == "UNAVAILABLE"
        wanted = 'sigma_max: "80.0" -> "40.0"'
        assert wanted in index["gmm_denoiser"]["reason"]
        assert wanted in Path(server.log_path).read_text()
    finally:
        client.close()
        server.stop()
