"""Writes a Triton model repository that serves one PyTorch model and its verifiers through the Python backend
(pb_torch.py), with every tensor and parameter docs/triton.md asks for computed from the loaded weights:

    python -m noisesearch_server.triton.repository --out DIR --model NAME=WEIGHTS [--verifier NAME=WEIGHTS ...]

The tensor signatures here are also what pb_torch checks a config.pbtxt against when Triton loads it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..backend import ConfigError, ModelSpec, VerifierSpec
from . import contract

FP32, FP64, INT64, STRING = "TYPE_FP32", "TYPE_FP64", "TYPE_INT64", "TYPE_STRING"
# The torch models compute in float32 or lower: FP64 states would only be rounded on the way in.
STATE = FP32
ONE = (1,)
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
# The noisesearch server's own --max-batch default: a request (one engine micro-batch) may not exceed it.
DEFAULT_MAX_BATCH = 64


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str
    dims: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name} {self.data_type} {list(self.dims)}"


Signature = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]


def denoiser_signature(spec: ModelSpec, state: str = STATE) -> Signature:
    """state: the datatype of x and x0 (FP32 for the torch networks, FP64 for the exact mixture)."""
    latent = tuple(spec.latent_shape)
    inputs = [TensorSpec(contract.X, state, latent), TensorSpec(contract.SIGMA, FP64, ONE)]
    if spec.num_classes:
        inputs.append(TensorSpec(contract.CLASS_LABEL, INT64, ONE))
    inputs.append(TensorSpec(contract.GUIDANCE, FP64, ONE))
    if spec.takes_prompts:
        inputs += [TensorSpec(contract.PROMPT, STRING, ONE), TensorSpec(contract.NEGATIVE_PROMPT, STRING, ONE)]
    return tuple(inputs), (TensorSpec(contract.X0, state, latent),)


def decoder_signature(spec: ModelSpec) -> Signature:
    return (
        (TensorSpec(contract.LATENTS, STATE, tuple(spec.latent_shape)),),
        (TensorSpec(contract.IMAGES, FP32, tuple(spec.image_shape)),),
    )


def verifier_signature(spec: VerifierSpec, sample_dims: Sequence[int], samples: str = FP32) -> Signature:
    """sample_dims: the model's image shape (every torch verifier scores decoded images, of any size), or its
    latent shape for a latent model (the mixture's verifiers score FP64 states: `samples`)."""
    inputs = [TensorSpec(contract.SAMPLES, samples, tuple(sample_dims))]
    # A verifier that needs no condition is sent none (remote.py), whatever kind its spec names.
    condition = spec.condition_kind if spec.needs_condition else ""
    if condition == "class":
        inputs.append(TensorSpec(contract.CLASS_LABEL, INT64, ONE))
    if condition == "prompt":
        inputs.append(TensorSpec(contract.PROMPT, STRING, ONE))
    if spec.kind == "self-supervised":
        inputs.append(TensorSpec(contract.PROBES, samples, tuple(sample_dims)))
    return tuple(inputs), (TensorSpec(contract.SCORE, FP64, ONE),)


def triton_name(name: str) -> str:
    return name.replace("-", "_")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    # The class in pb_torch that 1/model.py exposes to the stub as TritonPythonModel.
    python_class: str
    signature: Signature
    parameters: dict[str, str]


@dataclass(frozen=True)
class Batching:
    max_batch: int = DEFAULT_MAX_BATCH
    preferred: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    kind: str = "gpu"


def load_parameters(model: str, weights: str, resolution: int | None, dtype: str) -> dict[str, str]:
    """What pb_torch loads: the registry name, the folder, and the options the spec depends on."""
    named = {"model": model, "weights": weights}
    if resolution is not None:
        named["resolution"] = str(resolution)
    return named | {"dtype": dtype}


def model_configs(
    model: str, weights: str, resolution: int | None, dtype: str, spec: ModelSpec,
    verifiers: Sequence[tuple[str, str, VerifierSpec]],
) -> list[ModelConfig]:
    """The denoiser, its decoder (image models) and one model per verifier (registry name, weights, loaded spec)."""
    loading = load_parameters(model, weights, resolution, dtype)
    denoiser = f"{triton_name(model)}_denoiser"
    decoder = f"{triton_name(model)}_decoder" if spec.image_shape else ""
    configs = [ModelConfig(
        denoiser, "TorchDenoiser", denoiser_signature(spec),
        loading | ({contract.DECODER: decoder} if decoder else {}) | contract.model_parameters(spec),
    )]
    if decoder:
        # The decoder loads the same model; its identity is checked at load as the denoiser's parameters are.
        configs.append(ModelConfig(decoder, "TorchDecoder", decoder_signature(spec),
                                   loading | {"identity": spec.identity}))
    samples = spec.image_shape or spec.latent_shape
    for name, verifier_weights, verifier in verifiers:
        configs.append(ModelConfig(
            triton_name(name), "TorchVerifier", verifier_signature(verifier, samples),
            {"verifier": name, "weights": verifier_weights, "dtype": dtype} | contract.verifier_parameters(verifier),
        ))
    return configs


def quote(text: str) -> str:
    """A protobuf text-format string literal (identities and descriptions hold quotes and backslashes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensors(tensors: Sequence[TensorSpec]) -> str:
    return ",\n".join(
        f"  {{ name: {quote(t.name)} data_type: {t.data_type} dims: [ {', '.join(map(str, t.dims))} ] }}"
        for t in tensors
    )


def config_pbtxt(config: ModelConfig, batching: Batching) -> str:
    inputs, outputs = config.signature
    preferred = f"preferred_batch_size: [ {', '.join(map(str, batching.preferred))} ] " if batching.preferred else ""
    parameters = ",\n".join(
        f"  {{ key: {quote(key)} value: {{ string_value: {quote(value)} }} }}"
        for key, value in config.parameters.items()
    )
    return (
        "# Written by python -m noisesearch_server.triton.repository (deploy/triton/README.md); the model refuses to\n"
        "# load when these tensors or parameters disagree with what its weights give, naming the right values.\n"
        f"name: {quote(config.name)}\n"
        'backend: "python"\n'
        f"max_batch_size: {batching.max_batch}\n"
        f"input [\n{_tensors(inputs)}\n]\n"
        f"output [\n{_tensors(outputs)}\n]\n"
        f"instance_group [ {{ count: 1 kind: {KINDS[batching.kind]} }} ]\n"
        f"dynamic_batching {{ {preferred}max_queue_delay_microseconds: {batching.max_queue_delay_us} }}\n"
        f"parameters [\n{parameters}\n]\n"
    )


def model_py(config: ModelConfig) -> str:
    return (
        "# noisesearch's own network code (noisesearch_server/triton/pb_torch.py); config.pbtxt says which network.\n"
        f"from noisesearch_server.triton.pb_torch import {config.python_class} as TritonPythonModel  # noqa: F401\n"
    )


def write(out: Path, configs: Sequence[ModelConfig], batching: Batching) -> None:
    """Writes (or overwrites) each model's folder in `out`; other folders there, e.g. other models, stay."""
    for config in configs:
        (out / config.name / "1").mkdir(parents=True, exist_ok=True)
        (out / config.name / "config.pbtxt").write_text(config_pbtxt(config, batching), encoding="utf-8")
        (out / config.name / "1" / "model.py").write_text(model_py(config), encoding="utf-8")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def _named_folder(flag: str, value: str) -> tuple[str, str]:
    name, sep, folder = value.partition("=")
    if not sep or not name or not folder:
        raise ConfigError(f"{flag}: got {value!r}; want NAME=WEIGHTS (a registry name and a local folder)")
    # Absolute, as the stub's working directory is Triton's; not resolved, so a mount path stays as written.
    return name, str(Path(folder).expanduser().absolute())


def _preferred(value: str, max_batch: int) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(not 1 <= size <= max_batch for size in sizes):
        raise ConfigError(f"--preferred-batch: got {value!r}; want sizes like 4,8, each between 1 and --max-batch "
                          f"{max_batch}")
    return sizes


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = _OneLineParser(
        prog="python -m noisesearch_server.triton.repository",
        description="Write a Triton model repository (Python backend) for one PyTorch model and its verifiers. "
        "It loads the model and verifiers ON THE CPU, once, to compute each config.pbtxt's tensor dims and the "
        "parameters docs/triton.md lists (latent shape, schedule, identity, verifier kinds), so the weights must "
        "be readable here at the paths Triton will read them from. Existing folders of other models in --out "
        "are left alone.",
    )
    parser.add_argument("--out", required=True, help="the model repository folder (created when missing)")
    parser.add_argument("--model", required=True, metavar="NAME=WEIGHTS",
                        help="flux, sdxl, sdxl-dpo, pixart-sigma or sit, and its weights folder")
    parser.add_argument("--verifier", action="append", default=[], metavar="NAME=WEIGHTS",
                        help="a verifier and its weights folder; repeatable")
    parser.add_argument("--resolution", type=int, help="image side in pixels (flux, sdxl, pixart-sigma)")
    parser.add_argument("--dtype", default="auto",
                        help="auto (bfloat16 for --kind gpu, float32 for cpu), float32, bfloat16 or float16")
    parser.add_argument("--kind", choices=tuple(KINDS), default="gpu", help="where Triton runs each instance")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="max_batch_size: rows per request and per merged batch; keep the noisesearch "
                        "server's --max-batch at or below it (default %(default)s)")
    parser.add_argument("--preferred-batch", default="", metavar="N,N",
                        help="preferred_batch_size of the dynamic batcher, e.g. 4,8")
    parser.add_argument("--max-queue-delay-us", type=int, default=0,
                        help="how long the dynamic batcher may hold a request to merge more (default 0: it "
                        "merges only what queued while the instance was busy)")
    args = parser.parse_args(argv)
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch: got {args.max_batch}; want a positive number of rows")
    args.preferred_batch = _preferred(args.preferred_batch, args.max_batch) if args.preferred_batch else ()
    if args.max_queue_delay_us < 0:
        raise ConfigError(f"--max-queue-delay-us: got {args.max_queue_delay_us}; want 0 or more")
    args.model = _named_folder("--model", args.model)
    args.verifier = [_named_folder("--verifier", value) for value in args.verifier]
    if len({name for name, _ in args.verifier}) < len(args.verifier):
        raise ConfigError("--verifier: a verifier is named twice")
    return args


def build(args: argparse.Namespace) -> list[ModelConfig]:
    import torch

    from ..torchmodels.common import pick_dtype
    from ..torchmodels.registry import MODELS, VERIFIERS, load_model, load_verifiers

    # The dtype enters the identity, so it is the one the instances will use, not the CPU's default.
    dtype = str(pick_dtype(torch.device("cuda" if args.kind == "gpu" else "cpu"), args.dtype)).removeprefix("torch.")
    name, weights = args.model
    if name not in MODELS:
        raise ConfigError(f"--model: unknown model {name!r}; want one of {', '.join(MODELS)}")
    # Before loading the model, which takes minutes for the large ones.
    for verifier, _ in args.verifier:
        if verifier not in VERIFIERS:
            raise ConfigError(f"--verifier: unknown verifier {verifier!r}; want one of {', '.join(VERIFIERS)}")
    model = load_model(name, weights, "cpu", dtype, args.resolution)
    loaded = load_verifiers(dict(args.verifier), model, dtype)
    verifiers = [(verifier_name, folder, adapter.spec)
                 for (verifier_name, folder), adapter in zip(args.verifier, loaded, strict=True)]
    return model_configs(name, weights, args.resolution, dtype, model.spec, verifiers)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        configs = build(args)
    except ConfigError as error:
        print(f"repository: {error}", file=sys.stderr)
        return 2
    try:
        write(Path(args.out), configs, Batching(args.max_batch, args.preferred_batch, args.max_queue_delay_us,
                                                args.kind))
    except OSError as error:
        print(f"repository: cannot write {args.out}: {error}", file=sys.stderr)
        return 2
    for config in configs:
        print(Path(args.out) / config.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
