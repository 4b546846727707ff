"""The `triton` backend: the engine's DiffusionModel and Verifiers as Triton models (docs/triton.md). Everything
the engine does above the networks (solvers, noise, renoising, lineage cache, NFE accounting, isolation) is the
native engine's, unchanged; only D(x, σ, condition), the decoder and the verifiers' scores cross the network."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..backend import ConfigError, ModelSpec, RequestError, Rows, VerifierSpec
from ..images import decode_png, encode_pngs
from . import contract
from .client import TritonClient, TritonModelError

# The v2 datatype of a STRING input in ModelMetadata (config.pbtxt's TYPE_STRING).
STRING = "BYTES"


@dataclass(frozen=True)
class Tensor:
    datatype: str
    dims: tuple[int, ...]  # after the batch dimension

    def __str__(self) -> str:
        return f"{self.datatype} [-1{''.join(f', {d}' for d in self.dims)}]"


def _tensors(entries) -> dict[str, Tensor | str]:
    """name -> Tensor, or a string saying why the tensor is unusable (not batched)."""
    found: dict[str, Tensor | str] = {}
    for entry in entries:
        shape = list(entry.shape)
        if not shape or shape[0] != -1:
            found[entry.name] = f"{entry.datatype} {shape}: not batched; set max_batch_size > 0 in its config.pbtxt"
        else:
            found[entry.name] = Tensor(entry.datatype, tuple(shape[1:]))
    return found


class Signature:
    """A Triton model's inputs and outputs, checked against what the contract needs, every problem at once."""

    def __init__(self, client: TritonClient, model: str, flag: str) -> None:
        self.model = model
        self.what = f"triton model {model!r} ({flag})"
        metadata = client.metadata(model)
        self.inputs = _tensors(metadata.inputs)
        self.outputs = _tensors(metadata.outputs)
        config = client.config(model)
        # Calls with more rows than this are sent in slices; batched tensors guarantee it is at least 1.
        self.max_rows = max(1, config.max_batch_size)
        self.parameters = {name: value.string_value for name, value in config.parameters.items()}
        self.problems: list[str] = []

    def tensor(self, kind: str, name: str, datatypes: Sequence[str], dims: tuple[int, ...] | None = None) -> Tensor | None:
        table = self.inputs if kind == "input" else self.outputs
        found = table.get(name)
        want = f"{' or '.join(datatypes)} [-1{''.join(f', {d}' for d in dims) if dims is not None else ', ...'}]"
        if found is None:
            self.problems.append(f"{kind} {name!r} is missing; want {want}")
        elif isinstance(found, str):
            self.problems.append(f"{kind} {name!r} is {found}")
        elif found.datatype not in datatypes or (dims is not None and found.dims != dims) or any(d <= 0 for d in found.dims):
            self.problems.append(f"{kind} {name!r} is {found}; want {want}")
        else:
            return found
        return None

    def only_inputs(self, expected: Sequence[str]) -> None:
        extra = [name for name in self.inputs if name not in expected]
        if extra:
            self.problems.append(f"input {', '.join(map(repr, extra))} is not in the contract (docs/triton.md); this server sends {', '.join(expected)}")

    def check(self) -> None:
        if self.problems:
            raise ConfigError(f"{self.what}: " + "; ".join(self.problems))


def _strings(values: Sequence[str | None]) -> np.ndarray:
    return np.array([[("" if v is None else v).encode("utf-8")] for v in values], dtype=np.object_)


class TritonDenoiser:
    """The engine's DiffusionModel (an ImageModel too, when the denoiser names a decoder)."""

    def __init__(self, client: TritonClient, name: str, model: str) -> None:
        self.client = client
        self.model = model
        flag = f"--model {name}@triton:{model}"
        signature = Signature(client, model, flag)
        x = signature.tensor("input", contract.X, ("FP64", "FP32"))
        signature.tensor("input", contract.SIGMA, ("FP64",), (1,))
        signature.tensor("input", contract.GUIDANCE, ("FP64",), (1,))
        parameters = signature.parameters
        self.max_rows = signature.max_rows
        self.has_classes = contract.CLASS_LABEL in signature.inputs
        self.takes_prompts = contract.PROMPT in signature.inputs
        if self.has_classes:
            signature.tensor("input", contract.CLASS_LABEL, ("INT64",), (1,))
        if self.takes_prompts:
            signature.tensor("input", contract.PROMPT, (STRING,), (1,))
            signature.tensor("input", contract.NEGATIVE_PROMPT, (STRING,), (1,))
        expected = [contract.X, contract.SIGMA, contract.GUIDANCE]
        expected += [contract.CLASS_LABEL] if self.has_classes else []
        expected += [contract.PROMPT, contract.NEGATIVE_PROMPT] if self.takes_prompts else []
        signature.only_inputs(expected)
        if x is not None:
            signature.tensor("output", contract.X0, (x.datatype,), x.dims)
        self.decoder = parameters.get(contract.DECODER) or None
        self.decoder_rows = 1
        image_shape: tuple[int, ...] = ()
        if self.decoder is not None and x is not None:
            decoder = Signature(client, self.decoder, f"the decoder of {flag}")
            self.decoder_rows = decoder.max_rows
            # The decoder must belong to the same weights as the denoiser, or pictures come from another model.
            if decoder.parameters.get("identity") != parameters.get("identity"):
                decoder.problems.append(
                    f"parameter identity is {decoder.parameters.get('identity', '')!r}, the denoiser's is "
                    f"{parameters.get('identity', '')!r}; a decoder must come from the denoiser's weights"
                )
            decoder.tensor("input", contract.LATENTS, (x.datatype,), x.dims)
            decoder.only_inputs([contract.LATENTS])
            images = decoder.tensor("output", contract.IMAGES, ("FP32",))
            if images is not None and (len(images.dims) != 3 or images.dims[0] != 3):
                decoder.problems.append(f"output 'images' is {images}; want FP32 [-1, 3, H, W]")
            decoder.check()
            image_shape = images.dims if images is not None else ()
        signature.check()
        assert x is not None
        self.x_datatype = x.datatype
        try:
            self.spec: ModelSpec = contract.model_spec(name, parameters, x.dims, self.takes_prompts, image_shape, signature.what)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.has_classes != (self.spec.num_classes > 0):
            raise ConfigError(
                f"{signature.what}: parameter num_classes is {self.spec.num_classes} but input 'class_label' is "
                f"{'present' if self.has_classes else 'missing'}; a class model takes it, any other does not"
            )

    def _inputs(self, x: np.ndarray, sigma: float, rows: Rows) -> dict[str, tuple[np.ndarray, str]]:
        count = len(x)
        inputs = {
            contract.X: (x.reshape(count, *self.spec.latent_shape), self.x_datatype),
            contract.SIGMA: (np.full((count, 1), sigma, dtype=np.float64), "FP64"),
            contract.GUIDANCE: (rows.guidance.reshape(count, 1), "FP64"),
        }
        if self.has_classes:
            inputs[contract.CLASS_LABEL] = (rows.labels.reshape(count, 1), "INT64")
        if self.takes_prompts:
            inputs[contract.PROMPT] = (_strings([c.prompt for c in rows.conditions]), STRING)
            inputs[contract.NEGATIVE_PROMPT] = (_strings([c.negative_prompt for c in rows.conditions]), STRING)
        return inputs

    def denoise(self, x: np.ndarray, sigma: float, rows: Rows) -> np.ndarray:
        x0 = self.client.infer(self.model, self._inputs(x, sigma, rows), [contract.X0], self.max_rows)[contract.X0]
        return x0.reshape(len(x), -1).astype(np.float64)

    def decode(self, samples: np.ndarray) -> np.ndarray:
        assert self.decoder is not None
        latents = samples.reshape(len(samples), *self.spec.latent_shape)
        inputs = {contract.LATENTS: (latents, self.x_datatype)}
        return self.client.infer(self.decoder, inputs, [contract.IMAGES], self.decoder_rows)[contract.IMAGES]

    def stack_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(list(images))

    def encode_png(self, images: np.ndarray) -> list[bytes]:
        return encode_pngs(images)

    def decode_png(self, pngs: Sequence[bytes]) -> list[np.ndarray]:
        return [decode_png(png, self.spec.image_shape) for png in pngs]


class TritonVerifier:
    def __init__(self, client: TritonClient, name: str, model: str, denoiser: TritonDenoiser) -> None:
        self.client = client
        self.model = model
        signature = Signature(client, model, f"--verifier {name}@triton:{model}")
        self.max_rows = signature.max_rows
        try:
            self.spec: VerifierSpec = contract.verifier_spec(name, signature.parameters, signature.what)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        spec = denoiser.spec
        # What the engine hands a verifier: the latent itself for a latent model, the decoded picture otherwise.
        self.samples_datatype, dims = ("FP32", spec.image_shape) if spec.image_shape else (denoiser.x_datatype, spec.latent_shape)
        signature.tensor("input", contract.SAMPLES, (self.samples_datatype,), tuple(dims))
        expected = [contract.SAMPLES]
        # A verifier that needs no condition gets none, whatever kind of condition its model's rows carry.
        self.condition = self.spec.condition_kind if self.spec.needs_condition else ""
        if self.condition == "class":
            signature.tensor("input", contract.CLASS_LABEL, ("INT64",), (1,))
            expected.append(contract.CLASS_LABEL)
        if self.condition == "prompt":
            signature.tensor("input", contract.PROMPT, (STRING,), (1,))
            expected.append(contract.PROMPT)
        if self.spec.kind == "self-supervised":
            signature.tensor("input", contract.PROBES, (self.samples_datatype,), tuple(dims))
            expected.append(contract.PROBES)
        signature.only_inputs(expected)
        signature.tensor("output", contract.SCORE, ("FP64",), (1,))
        if self.condition == "class" and not spec.num_classes:
            signature.problems.append(f"it scores against a class, and model {spec.name!r} has none")
        if self.condition == "prompt" and not spec.takes_prompts:
            signature.problems.append(f"it scores against a prompt, and model {spec.name!r} takes classes")
        signature.check()

    def score(self, samples: np.ndarray, rows: Rows, probes: np.ndarray | None) -> np.ndarray:
        count = len(samples)
        inputs = {contract.SAMPLES: (np.asarray(samples), self.samples_datatype)}
        if self.condition == "class":
            inputs[contract.CLASS_LABEL] = (rows.labels.reshape(count, 1), "INT64")
        if self.condition == "prompt":
            inputs[contract.PROMPT] = (_strings([c.prompt for c in rows.conditions]), STRING)
        if self.spec.kind == "self-supervised":
            assert probes is not None
            inputs[contract.PROBES] = (np.asarray(probes), self.samples_datatype)
        return self.client.infer(self.model, inputs, [contract.SCORE], self.max_rows)[contract.SCORE].reshape(count)


class Readiness:
    """SERVING only while Triton's ServerReady and every configured ModelReady hold (docs/triton.md)."""

    def __init__(self, client: TritonClient, models: Sequence[str]) -> None:
        self.client = client
        self.models = tuple(dict.fromkeys(models))

    def ready(self) -> bool:
        return self.client.server_ready() and all(self.client.model_ready(m) for m in self.models)

    def close(self) -> None:
        self.client.close()

    def why_not(self) -> str:
        if not self.client.server_ready():
            return f"triton at {self.client.address} is not reachable or not ready"
        reasons = self.client.not_ready_reasons(self.models)
        return "; ".join(f"model {m!r} is not ready ({reason})" for m, reason in reasons.items()) or "ready"

    def wait(self, timeout_s: float, poll_s: float = 0.25, say_every_s: float = 10.0) -> None:
        """Until everything is ready; ConfigError saying what is not after timeout_s (Triton loading a large model
        takes minutes, so a server started beside it waits rather than crash-looping)."""
        deadline = time.monotonic() + timeout_s
        said = time.monotonic()
        while not self.ready():
            now = time.monotonic()
            if now >= deadline:
                raise ConfigError(f"--triton {self.client.address}: not ready after {timeout_s:g} s: {self.why_not()}")
            if now - said >= say_every_s:
                print(f"noisesearch-server: waiting for triton: {self.why_not()}", file=sys.stderr, flush=True)
                said = now
            time.sleep(min(poll_s, max(0.0, deadline - now)))


def connect(
    address: str, name: str, model: str, verifiers: Sequence[tuple[str, str]], *, wait_s: float, timeout_s: float,
    max_message_bytes: int,
) -> tuple[TritonDenoiser, list[TritonVerifier], Readiness]:
    client = TritonClient(address, timeout_s=timeout_s, max_message_bytes=max_message_bytes)
    try:
        models = [model, *(m for _, m in verifiers)]
        Readiness(client, models).wait(wait_s)
        denoiser = TritonDenoiser(client, name, model)
        if denoiser.decoder is not None:
            models.append(denoiser.decoder)
            Readiness(client, models).wait(wait_s)
        loaded = [TritonVerifier(client, verifier, verifier_model, denoiser) for verifier, verifier_model in verifiers]
    except (RequestError, TritonModelError) as error:
        # Triton went away between the readiness check and the metadata calls: still one line at start.
        client.close()
        raise ConfigError(f"--triton {address}: {error}") from None
    except BaseException:
        client.close()
        raise
    return denoiser, loaded, Readiness(client, models)

