"""The embedded Gaussian mixture (gmm.py) as Triton Python-backend models, deploy/triton/gmm/: the denoiser and
its three verifiers run the native backend's own code on each request alone, so a request computes what the
engine's micro-batch would have computed in the native backend (up to the numpy version, see the identity)."""

from __future__ import annotations

import numpy as np

from ..gmm import ClassifierVerifier, GaussianMixture, GmmConfig, OracleVerifier, SelfSupervisedVerifier
from . import contract, pb_common
from .repository import FP64, denoiser_signature, verifier_signature


class GmmDenoiser:
    def initialize(self, args: dict) -> None:
        self.model = GaussianMixture(GmmConfig())
        pb_common.refuse_other_signature(args["model_name"], args, denoiser_signature(self.model.spec, FP64))
        pb_common.refuse_disagreement(
            args["model_name"], pb_common.parameters(args), contract.model_parameters(self.model.spec)
        )

    def execute(self, requests: list) -> list:
        return pb_common.each(requests, self._denoise)

    def _denoise(self, request) -> dict[str, np.ndarray]:
        x = pb_common.tensor(request, contract.X)
        sigma = pb_common.tensor(request, contract.SIGMA).reshape(len(x))
        rows = pb_common.rows(request, len(x))
        levels = np.unique(sigma)
        if len(levels) == 1:
            return {contract.X0: self.model.denoise(x, float(levels[0]), rows)}
        # The engine sends one noise level per request, but the contract lets σ vary by row: each level's rows
        # are denoised together, and rows never depend on each other (gmm.py's module note).
        x0 = np.empty_like(x)
        for level in levels:
            chosen = np.flatnonzero(sigma == level)
            x0[chosen] = self.model.denoise(x[chosen], float(level), rows[chosen])
        return {contract.X0: x0}

    def finalize(self) -> None:
        pass


class GmmVerifier:
    """One of the mixture's verifiers; a subclass names which."""

    verifier_type: type[OracleVerifier | ClassifierVerifier | SelfSupervisedVerifier]

    def initialize(self, args: dict) -> None:
        model = GaussianMixture(GmmConfig())
        self.verifier = self.verifier_type(model)
        signature = verifier_signature(self.verifier.spec, model.spec.latent_shape, FP64)
        pb_common.refuse_other_signature(args["model_name"], args, signature)
        pb_common.refuse_disagreement(
            args["model_name"], pb_common.parameters(args), contract.verifier_parameters(self.verifier.spec)
        )

    def execute(self, requests: list) -> list:
        return pb_common.each(requests, self._score)

    def _score(self, request) -> dict[str, np.ndarray]:
        samples = pb_common.tensor(request, contract.SAMPLES)
        probes = pb_common.tensor(request, contract.PROBES)
        scores = self.verifier.score(samples, pb_common.rows(request, len(samples)), probes)
        return {contract.SCORE: np.asarray(scores, dtype=np.float64).reshape(len(samples), 1)}

    def finalize(self) -> None:
        pass


class GmmOracle(GmmVerifier):
    verifier_type = OracleVerifier


class GmmClassifier(GmmVerifier):
    verifier_type = ClassifierVerifier


class GmmSelfSupervised(GmmVerifier):
    verifier_type = SelfSupervisedVerifier
