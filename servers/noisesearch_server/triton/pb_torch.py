"""Python-backend models that run the native torch backend's own network code inside Triton (docs/triton.md):
a denoiser, a decoder and a verifier, each named by its config.pbtxt's `parameters` and refusing to load when
the declared tensors or parameters describe another model than its weights give.

Dynamic batching is on for these models, so one execute may hold requests at several noise levels: the
denoiser concatenates the rows of every request and runs one forward per sigma, the GPU's share of Triton's
batcher. Rows are independent (TorchDenoiser's contract), so merging changes no row's result beyond the float
rounding a larger batch's kernels may bring."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..backend import Rows
from ..torchmodels.registry import load_model, load_verifier
from . import contract, pb_common
from .repository import decoder_signature, denoiser_signature, verifier_signature


def _what(args: dict) -> str:
    return f"Triton model {args['model_name']}"


def _named(args: dict, *names: str) -> dict[str, str]:
    """The config's parameters, when it has those that say what to load."""
    parameters = pb_common.parameters(args)
    missing = [name for name in names if not parameters.get(name)]
    if missing:
        raise ValueError(f"{_what(args)}: config.pbtxt lacks parameters {', '.join(missing)} (what to load; "
                         "python -m noisesearch_server.triton.repository writes them)")
    return parameters


def _load(args: dict):
    """The TorchModel a denoiser's or decoder's parameters name, on the device Triton gave this instance."""
    parameters = _named(args, "model", "weights")
    resolution = int(parameters["resolution"]) if parameters.get("resolution") else None
    model = load_model(parameters["model"], parameters["weights"], pb_common.device_name(args),
                       parameters.get("dtype", "auto"), resolution)
    return parameters, model


def _decoded(requests: Sequence, decode: Callable[[object], tuple]) -> list:
    """Each request's inputs, or the exception that decoding them raised (that request alone fails)."""
    decoded = []
    for request in requests:
        try:
            decoded.append(decode(request))
        except Exception as error:  # noqa: BLE001 (a malformed request is that request's INTERNAL)
            decoded.append(error)
    return decoded


def _respond(decoded: list, outputs: Callable[[slice], dict[str, np.ndarray]], errors: dict[int, Exception]):
    """One response per request: its slice of the merged rows, or its error."""
    responses, start = [], 0
    for i, inputs in enumerate(decoded):
        if isinstance(inputs, Exception):
            responses.append(pb_common.failed(inputs))
            continue
        rows = slice(start, start + len(inputs[0]))
        start = rows.stop
        responses.append(pb_common.failed(errors[i]) if i in errors else pb_common.answer(outputs(rows)))
    return responses


def _merged_rows(decoded: list) -> Rows:
    return Rows([c for inputs in decoded if not isinstance(inputs, Exception) for c in inputs[-1].conditions])


class TorchDenoiser:
    def initialize(self, args: dict) -> None:
        parameters, self.model = _load(args)
        spec = self.model.spec
        pb_common.refuse_other_signature(_what(args), args, denoiser_signature(spec))
        pb_common.refuse_disagreement(_what(args), parameters, contract.model_parameters(spec))

    def _decode(self, request) -> tuple:
        x = pb_common.tensor(request, contract.X)
        sigma = pb_common.tensor(request, contract.SIGMA).reshape(len(x))
        return x, sigma, pb_common.rows(request, len(x))

    def execute(self, requests: Sequence) -> list:
        decoded = _decoded(requests, self._decode)
        good = [(i, inputs) for i, inputs in enumerate(decoded) if not isinstance(inputs, Exception)]
        if not good:
            return _respond(decoded, lambda at: {}, {})
        x = np.concatenate([inputs[0].reshape(len(inputs[0]), -1) for _, inputs in good])
        sigma = np.concatenate([inputs[1] for _, inputs in good])
        owner = np.concatenate([np.full(len(inputs[0]), i) for i, inputs in good])
        rows = _merged_rows(decoded)
        x0 = np.empty(x.shape, dtype=np.float32)
        errors: dict[int, Exception] = {}
        for level in np.unique(sigma):
            picked = np.flatnonzero(sigma == level)
            try:
                x0[picked] = self.model.denoise(x[picked], float(level), rows[picked])
            except Exception as error:  # noqa: BLE001 (a failing sigma group fails only the requests in it)
                for i in np.unique(owner[picked]):
                    errors.setdefault(int(i), error)
        shape = tuple(self.model.spec.latent_shape)
        return _respond(decoded, lambda at: {contract.X0: x0[at].reshape(-1, *shape)}, errors)


class TorchDecoder:
    def initialize(self, args: dict) -> None:
        parameters, self.model = _load(args)
        spec = self.model.spec
        pb_common.refuse_other_signature(_what(args), args, decoder_signature(spec))
        pb_common.refuse_disagreement(_what(args), parameters, {"identity": spec.identity})

    def execute(self, requests: Sequence) -> list:
        decoded = _decoded(requests, lambda request: (pb_common.tensor(request, contract.LATENTS),))
        good = [inputs[0] for inputs in decoded if not isinstance(inputs, Exception)]
        errors: dict[int, Exception] = {}
        images = None
        if good:
            try:
                latents = np.concatenate([x.reshape(len(x), -1) for x in good])
                images = self.model.decode(latents).cpu().numpy()
            except Exception as error:  # noqa: BLE001 (one decode call serves, and fails, every request in it)
                errors = dict.fromkeys(range(len(decoded)), error)
        return _respond(decoded, lambda at: {contract.IMAGES: images[at]}, errors)


class TorchVerifier:
    def initialize(self, args: dict) -> None:
        parameters = _named(args, "verifier", "weights")
        # selfsup takes its sigma from the configuration (repository.py computed it from the model), so that
        # parameter is the one a mismatch cannot reveal; every other one is checked against the loaded verifier.
        declared_sigma = float(parameters["xpred_sigma"]) if parameters.get("xpred_sigma") else None
        self.verifier = load_verifier(parameters["verifier"], parameters["weights"], pb_common.device_name(args),
                                      parameters.get("dtype", "auto"), declared_sigma)
        config = json.loads(args["model_config"])
        samples = pb_common.declared_tensors(config, "input").get(contract.SAMPLES, ("", ()))[1]
        # Verifiers score images of any size: the samples' dims are the model's, which the server checks.
        pb_common.refuse_other_signature(_what(args), args, verifier_signature(self.verifier.spec, samples))
        pb_common.refuse_disagreement(_what(args), parameters, contract.verifier_parameters(self.verifier.spec))
        self.device = self.verifier.verifier.device

    def _decode(self, request) -> tuple:
        samples = pb_common.tensor(request, contract.SAMPLES)
        return samples, pb_common.tensor(request, contract.PROBES), pb_common.rows(request, len(samples))

    def _tensor(self, arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.concatenate(arrays), dtype=np.float32)).to(self.device)

    def execute(self, requests: Sequence) -> list:
        decoded = _decoded(requests, self._decode)
        good = [inputs for inputs in decoded if not isinstance(inputs, Exception)]
        errors: dict[int, Exception] = {}
        scores = None
        if good:
            try:
                probes = None if good[0][1] is None else self._tensor([inputs[1] for inputs in good])
                scores = self.verifier.score(self._tensor([inputs[0] for inputs in good]), _merged_rows(decoded),
                                             probes)
            except Exception as error:  # noqa: BLE001 (one scoring call serves, and fails, every request in it)
                errors = dict.fromkeys(range(len(decoded)), error)
        return _respond(decoded, lambda at: {contract.SCORE: scores[at].reshape(-1, 1)}, errors)
