"""An exact diffusion model: a class-conditional Gaussian mixture with a closed-form denoiser.

Every per-row reduction below is an elementwise product summed over a contiguous last axis, or a Python
loop over a small axis in a fixed order, never a BLAS call: BLAS picks kernels by batch size, and a
candidate's result must not depend on the batch it was evaluated in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .backend import ModelSpec, Rows, VerifierSpec


@dataclass(frozen=True)
class GmmConfig:
    dim: int = 16
    num_classes: int = 10
    components_per_class: int = 3
    rank: int = 2
    seed: int = 0
    # Class centres and component shapes close relative to the isotropic spread keep classes overlapping
    # (mean true-class posterior about 0.5), so a classifier verifier has something to choose between.
    class_spread: float = 0.2
    component_spread: float = 0.15
    isotropic_std: float = 0.5
    factor_scale: float = 0.4
    # Heun, 28 steps on [0.02, 40]: 55 NFEs per sample, with Fréchet distances to exact draws within a few
    # percent of the finite-sample floor (servers/README.md, "The default sampler"; tests/test_sampler.py).
    sigma_min: float = 0.02
    sigma_max: float = 40.0
    rho: float = 7.0
    default_solver: str = "heun"
    default_steps: int = 28
    default_guidance_scale: float = 1.0
    feature_count: int = 32
    selfsup_sigma: float = 0.4

    def problems(self) -> list[str]:
        checks = [
            (self.dim >= 1, f"dim must be >= 1, got {self.dim}"),
            (self.num_classes >= 1, f"num_classes must be >= 1, got {self.num_classes}"),
            (self.components_per_class >= 1, f"components_per_class must be >= 1, got {self.components_per_class}"),
            (0 <= self.rank <= self.dim, f"rank must be in [0, dim={self.dim}], got {self.rank}"),
            (self.isotropic_std > 0, f"isotropic_std must be > 0, got {self.isotropic_std}"),
            (0 < self.sigma_min < self.sigma_max, f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"),
            (self.rho > 0, f"rho must be > 0, got {self.rho}"),
            (self.default_solver in ("euler", "heun"), f"default_solver must be euler or heun, got {self.default_solver!r}"),
            (self.default_steps >= 1, f"default_steps must be >= 1, got {self.default_steps}"),
            (self.default_guidance_scale >= 0, f"default_guidance_scale must be >= 0, got {self.default_guidance_scale}"),
            (self.sigma_min <= self.selfsup_sigma <= self.sigma_max, f"selfsup_sigma must be in [sigma_min, sigma_max], got {self.selfsup_sigma}"),
        ]
        return [message for ok, message in checks if not ok]


def logsumexp(values: np.ndarray) -> np.ndarray:
    """Over the last axis, which must be contiguous (see the module note)."""
    peak = values.max(axis=-1, keepdims=True)
    safe_peak = np.where(np.isfinite(peak), peak, 0.0)
    return np.log(np.exp(values - safe_peak).sum(axis=-1)) + safe_peak[..., 0]


def rows_times(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """values (B, M) times table (M, N), accumulated over m in a fixed order."""
    total = values[:, 0, None] * table[0]
    for m in range(1, len(table)):
        total += values[:, m, None] * table[m]
    return total


def row_contract(values: np.ndarray, table_t: np.ndarray) -> np.ndarray:
    """values (B, M) times table_t.T, with table_t (N, M) contiguous: products summed over the last axis."""
    return (values[:, None, :] * table_t[None]).sum(axis=-1)


class GaussianMixture:
    """Component k: N(mu_k, s^2 I + U_k U_k^T); equal weights within a class, equal class priors."""

    # Rows per denoiser pass: its (rows, dim, K (1 + rank)) product then stays in a core's cache.
    DENOISE_ROWS = 128

    def __init__(self, config: GmmConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        components = config.num_classes * config.components_per_class
        centres = rng.standard_normal((config.num_classes, config.dim)) * config.class_spread
        self.means = np.repeat(centres, config.components_per_class, axis=0) + (
            rng.standard_normal((components, config.dim)) * config.component_spread
        )
        # factors[k, j] is the j-th column of U_k, stored as a contiguous row.
        self.factors = rng.standard_normal((components, config.rank, config.dim)) * (
            config.factor_scale / math.sqrt(max(config.rank, 1))
        )
        self.component_class = np.repeat(np.arange(config.num_classes), config.components_per_class)
        self.factor_gram = np.einsum("kid,kjd->kij", self.factors, self.factors)
        factor_columns = [self.factors[:, j, :] for j in range(config.rank)]
        # x . [mu_k, u_k0, u_k1, ...] as one (D, K (1 + rank)) table, and its transpose for the way back.
        self._input_table = np.ascontiguousarray(np.concatenate([self.means.T] + [u.T for u in factor_columns], axis=1))
        self._output_table = np.ascontiguousarray(np.concatenate([self.means] + factor_columns, axis=0).T)
        self._mean_norms = (self.means * self.means).sum(axis=-1)
        self._mean_projections = [(self.means * u).sum(axis=-1) for u in factor_columns]
        features = np.random.default_rng([config.seed, 1])
        self.feature_weights = features.standard_normal((config.feature_count, config.dim)) / math.sqrt(config.dim)
        self.feature_bias = features.standard_normal(config.feature_count) * 0.5
        self._feature_table = np.ascontiguousarray(self.feature_weights.T)
        self.spec = ModelSpec(
            name="gmm",
            latent_shape=(config.dim,),
            sigma_min=config.sigma_min,
            sigma_max=config.sigma_max,
            rho=config.rho,
            num_classes=config.num_classes,
            default_solver=config.default_solver,
            default_steps=config.default_steps,
            default_guidance_scale=config.default_guidance_scale,
            # numpy keeps its random streams only within a version: a new numpy is a new model.
            identity=f"gmm:numpy={np.__version__}:" + repr(sorted(asdict(config).items())),
        )

    def _noise_terms(self, sigma: float) -> tuple[float, np.ndarray, np.ndarray]:
        """a = s^2 + sigma^2, (a I_r + U^T U)^-1 per component, and log det(Sigma_k + sigma^2 I) per component.

        Woodbury: (a I + U U^T)^-1 = (I - U (a I_r + U^T U)^-1 U^T) / a, and the matrix determinant lemma:
        det(a I + U U^T) = a^(D - r) det(a I_r + U^T U).
        """
        config = self.config
        a = config.isotropic_std**2 + sigma * sigma
        small = a * np.eye(config.rank) + self.factor_gram
        log_det = (config.dim - config.rank) * math.log(a) + np.linalg.slogdet(small)[1]
        return a, np.linalg.inv(small), log_det

    def _component_log_densities(self, x: np.ndarray, noise_terms) -> tuple[np.ndarray, list[np.ndarray]]:
        """log N(x; mu_k, Sigma_k + sigma^2 I) as (B, K), and the Woodbury coefficients
        c_j = (a I_r + U^T U)^-1 U^T (x - mu_k) as `rank` arrays (B, K). |x - mu_k|^2 and U^T (x - mu_k) come
        from x . mu_k and x . u_kj, so that no (B, K, D) array is ever formed."""
        config = self.config
        a, small_inverse, log_det = noise_terms
        components = len(self.means)
        products = rows_times(x, self._input_table)
        squared = (x * x).sum(axis=-1, keepdims=True) - 2 * products[:, :components] + self._mean_norms
        projections = [
            products[:, (j + 1) * components : (j + 2) * components] - self._mean_projections[j]
            for j in range(config.rank)
        ]
        coefficients = [
            sum(small_inverse[None, :, j, i] * projections[i] for i in range(config.rank))
            for j in range(config.rank)
        ]
        quadratic = (squared - sum(p * c for p, c in zip(projections, coefficients))) / a
        log_density = -0.5 * (quadratic + log_det[None] + config.dim * math.log(2 * math.pi))
        return log_density, coefficients

    def denoise(self, x: np.ndarray, sigma: float, rows: Rows) -> np.ndarray:
        return self.posterior_mean(x, sigma, rows.labels, rows.guidance)

    def posterior_mean(self, x: np.ndarray, sigma: float, labels: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        """E[x0 | x_sigma] per row, guided: D_uncond + w (D_cond - D_uncond); negative labels are unconditional."""
        noise_terms = self._noise_terms(sigma)
        rows = self.DENOISE_ROWS
        if len(x) <= rows:
            return self._denoise_rows(x, sigma, noise_terms, labels, guidance)
        return np.concatenate([
            self._denoise_rows(x[i : i + rows], sigma, noise_terms, labels[i : i + rows], guidance[i : i + rows])
            for i in range(0, len(x), rows)
        ])

    def _denoise_rows(
        self, x: np.ndarray, sigma: float, noise_terms, labels: np.ndarray, guidance: np.ndarray
    ) -> np.ndarray:
        """Per component, E[x0 | x_sigma, k] = x - sigma^2 (Sigma_k + sigma^2 I)^-1 (x - mu_k). The mixture is linear
        in the responsibilities, so guidance mixes the responsibilities rather than two denoised batches."""
        log_density, coefficients = self._component_log_densities(x, noise_terms)
        unconditional = labels < 0
        in_class = unconditional[:, None] | (self.component_class[None, :] == labels[:, None])
        weights = _softmax(np.where(in_class, log_density, -np.inf))
        plain = unconditional | (guidance == 1.0)
        if not np.all(plain):
            unconditional_weights = _softmax(log_density)
            guided = unconditional_weights + guidance[:, None] * (weights - unconditional_weights)
            weights = np.where(plain[:, None], weights, guided)
        # sum_k w_k (mu_k + U_k c_k): the responsibility-weighted means and low-rank corrections, at once.
        weighted = np.concatenate([weights] + [weights * c for c in coefficients], axis=1)
        mixed = row_contract(weighted, self._output_table)
        return x - (sigma * sigma / noise_terms[0]) * (x - mixed)

    def class_log_densities(self, x: np.ndarray) -> np.ndarray:
        """log p(x | c) under the data distribution, as (B, C)."""
        log_density, _ = self._component_log_densities(x, self._noise_terms(0.0))
        per_class = log_density.reshape(len(x), self.config.num_classes, self.config.components_per_class)
        return logsumexp(per_class) - math.log(self.config.components_per_class)

    def features(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(rows_times(x, self._feature_table) + self.feature_bias)

    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Exact draws x0 ~ p(x | c) for the tests and the benchmark."""
        config = self.config
        within = rng.integers(0, config.components_per_class, size=len(labels))
        components = labels * config.components_per_class + within
        isotropic = rng.standard_normal((len(labels), config.dim)) * config.isotropic_std
        latent = rng.standard_normal((len(labels), config.rank))
        low_rank = sum(latent[:, j, None] * self.factors[components, j, :] for j in range(config.rank))
        return self.means[components] + isotropic + low_rank


def _softmax(logits: np.ndarray) -> np.ndarray:
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True)


class OracleVerifier:
    def __init__(self, model: GaussianMixture) -> None:
        self.model = model
        self.spec = VerifierSpec(
            name="gmm-oracle",
            kind="oracle",
            needs_condition=True,
            xpred_sigma=0.0,
            description="log p(x | c): the true class log-density of the sample under the data distribution",
        )

    def score(self, samples: np.ndarray, rows: Rows, probes: np.ndarray | None) -> np.ndarray:
        return self.model.class_log_densities(samples)[np.arange(len(samples)), rows.labels]


class ClassifierVerifier:
    def __init__(self, model: GaussianMixture) -> None:
        self.model = model
        self.spec = VerifierSpec(
            name="gmm-classifier",
            kind="supervised",
            needs_condition=True,
            xpred_sigma=0.0,
            description="log p(c | x): the Bayes classifier's log posterior of the class, equal priors",
        )

    def score(self, samples: np.ndarray, rows: Rows, probes: np.ndarray | None) -> np.ndarray:
        class_log_densities = self.model.class_log_densities(samples)
        chosen = class_log_densities[np.arange(len(samples)), rows.labels]
        return chosen - logsumexp(class_log_densities)


class SelfSupervisedVerifier:
    def __init__(self, model: GaussianMixture) -> None:
        self.model = model
        self.spec = VerifierSpec(
            name="gmm-selfsup",
            kind="self-supervised",
            needs_condition=False,
            xpred_sigma=model.config.selfsup_sigma,
            description=(
                f"cosine similarity, in a fixed random tanh feature space, between the x-prediction at "
                f"sigma <= {model.config.selfsup_sigma} and the sample"
            ),
        )

    def score(self, samples: np.ndarray, rows: Rows, probes: np.ndarray | None) -> np.ndarray:
        assert probes is not None
        sample_features = self.model.features(samples)
        xpred_features = self.model.features(probes)
        dot = (sample_features * xpred_features).sum(axis=-1)
        norms = np.sqrt((sample_features**2).sum(axis=-1) * (xpred_features**2).sum(axis=-1))
        return dot / norms


def gmm_verifiers(model: GaussianMixture) -> list[OracleVerifier | ClassifierVerifier | SelfSupervisedVerifier]:
    return [OracleVerifier(model), ClassifierVerifier(model), SelfSupervisedVerifier(model)]


class GmmPopulation:
    """What the population metrics need from the mixture (see population.py).

    Features: the same fixed random tanh map as `gmm-selfsup` (`GaussianMixture.features`, seeded by
    `Generator([seed, 1])`). Reference draws for class c (c = -1: the whole mixture, classes drawn uniformly)
    come from `Generator([seed, 3, c + 1])`, so they depend only on the class and the count.
    """

    def __init__(self, model: GaussianMixture) -> None:
        self.model = model
        self.num_classes = model.config.num_classes
        self.feature_dim = model.config.feature_count

    def features(self, x: np.ndarray) -> np.ndarray:
        return self.model.features(x)

    def class_log_posteriors(self, x: np.ndarray) -> np.ndarray:
        class_log_densities = self.model.class_log_densities(x)
        return class_log_densities - logsumexp(class_log_densities)[:, None]

    def reference_samples(self, label: int, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.model.config.seed, 3, label + 1])
        if label < 0:
            labels = rng.integers(0, self.num_classes, size=count)
        else:
            labels = np.full(count, label)
        return self.model.sample(labels, rng)
