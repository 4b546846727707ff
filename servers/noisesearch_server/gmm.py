"""An exact diffusion model: a class-conditional Gaussian mixture with a closed-form denoiser.

A candidate's result must not depend on the batch it was evaluated in, so every per-row quantity is computed
from that row alone: elementwise operations, and sums over one axis of a fixed length (the dimension, the
rank, the components a row needs) by `np.einsum` without `optimize`, which runs numpy's own loops and adds each
output's terms in the same order whatever the number of rows (tests/test_gmm.py checks batches of 1 to 260).
Never a BLAS call: BLAS picks kernels and blockings by the number of rows. Which components a row needs depends
only on the row (its class's, or the whole mixture's for unconditional and guided rows), never on its neighbours.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np

from .backend import ModelSpec, Rows, VerifierSpec

# Part of the model identity (the trajectory cache key): raised whenever the denoiser's arithmetic changes.
FORMULATION_REVISION = 2


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


@dataclass(frozen=True)
class ComponentTable:
    """What n components contribute at one sigma. With M_k = a I_r + U_k^T U_k = R_k R_k^T (Cholesky) and the
    whitened factors W_k = R_k^-1 U_k^T (rank x dim), Woodbury gives (Sigma_k + sigma^2 I)^-1 = (I - W_k^T W_k) / a,
    and the matrix determinant lemma log det(Sigma_k + sigma^2 I) = (dim - rank) log a + log det M_k.

    `vectors` stacks mu_k and the rows of W_k as ((1 + rank) n, dim): x . vectors gives x . mu_k and W_k x in one
    pass, and the same table maps the responsibility-weighted (1, W_k d) back to sum_k p_k (mu_k + W_k^T W_k d)."""

    vectors: np.ndarray  # ((1 + rank) n, dim): mu_0 .. mu_n-1, then W_k's row 0 for every k, then row 1, ...
    mean_projections: np.ndarray  # (rank, n): W_k mu_k
    offsets: np.ndarray  # (n,): -(log det(Sigma_k + sigma^2 I) + dim log 2 pi + |mu_k|^2 / a) / 2


@dataclass(frozen=True)
class NoiseTerms:
    a: float  # s^2 + sigma^2
    mixture: ComponentTable  # every component
    classes: ComponentTable  # the same per class, each field with a leading class axis


class GaussianMixture:
    """Component k: N(mu_k, s^2 I + U_k U_k^T); equal weights within a class, equal class priors."""

    # Rows per denoiser pass, so that a pass's arrays stay in a core's cache: a batch of 256 ran at 1.15x the
    # NFE/s of one in blocks of 128 through the engine, 512 in blocks of 512 no faster. Results do not depend on it.
    DENOISE_ROWS = 256
    # Distinct sigmas whose noise terms are kept (about 24 KB each at the default size; recomputing one takes
    # 0.1 to 0.3 ms, as long as a whole denoiser call at 64 rows): a solve's schedule repeats across candidates
    # and batches.
    NOISE_TERMS_CACHED = 256

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
        self.noise_terms = functools.lru_cache(maxsize=self.NOISE_TERMS_CACHED)(self._compute_noise_terms)
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
            # numpy keeps its random streams only within a version: a new numpy is a new model. The formulation's
            # revision goes in too: a denoiser summing in another order (revision 2 computes only the
            # components a row needs) gives states that differ by rounding, so they must not share keys.
            identity=f"gmm/{FORMULATION_REVISION}:numpy={np.__version__}:" + repr(sorted(asdict(config).items())),
        )

    def _compute_noise_terms(self, sigma: float) -> NoiseTerms:
        """Once per sigma, for every row alike, so BLAS and LAPACK are fine here."""
        config = self.config
        classes, per_class, rank, dim = config.num_classes, config.components_per_class, config.rank, config.dim
        a = config.isotropic_std**2 + sigma * sigma
        cholesky = np.linalg.cholesky(a * np.eye(rank) + self.factor_gram)
        whitened = np.linalg.solve(cholesky, self.factors)  # (K, rank, dim)
        log_det = (dim - rank) * math.log(a) + 2 * np.log(np.diagonal(cholesky, axis1=-2, axis2=-1)).sum(axis=-1)
        # (1 + rank, K, dim): the means, then each row of W_k across components.
        vectors = np.concatenate([self.means[None], whitened.transpose(1, 0, 2)])
        mean_projections = np.einsum("krd,kd->rk", whitened, self.means)
        offsets = -0.5 * (log_det + dim * math.log(2 * math.pi) + (self.means * self.means).sum(axis=-1) / a)
        mixture = ComponentTable(np.ascontiguousarray(vectors.reshape(-1, dim)), mean_projections, offsets)
        by_class = ComponentTable(
            np.ascontiguousarray(vectors.reshape(1 + rank, classes, per_class, dim).transpose(1, 0, 2, 3).reshape(classes, -1, dim)),
            np.ascontiguousarray(mean_projections.reshape(rank, classes, per_class).transpose(1, 0, 2)),
            offsets.reshape(classes, per_class),
        )
        return NoiseTerms(a, mixture, by_class)

    def denoise(self, x: np.ndarray, sigma: float, rows: Rows) -> np.ndarray:
        return self.posterior_mean(x, sigma, rows.labels, rows.guidance)

    def posterior_mean(self, x: np.ndarray, sigma: float, labels: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        """E[x0 | x_sigma] per row, guided: D_uncond + w (D_cond - D_uncond); negative labels are unconditional.

        Per component, E[x0 | x_sigma, k] = x - sigma^2 (Sigma_k + sigma^2 I)^-1 (x - mu_k)
        = x - (sigma^2 / a) (x - mu_k - W_k^T W_k (x - mu_k)); the mixture weighs these by p(k | x_sigma). A
        labelled row at guidance 1 needs only its class's components; any other row needs the whole mixture."""
        terms = self.noise_terms(float(sigma))
        class_only = (labels >= 0) & (guidance == 1.0)
        if class_only.all():
            mixed = self._in_blocks(self._class_mix, x, terms, labels, guidance)
        else:
            mixed = np.empty_like(x)
            for rows, method in ((np.flatnonzero(class_only), self._class_mix), (np.flatnonzero(~class_only), self._mixture_mix)):
                if len(rows):
                    mixed[rows] = self._in_blocks(method, x[rows], terms, labels[rows], guidance[rows])
        return x - (sigma * sigma / terms.a) * (x - mixed)

    def _in_blocks(self, method, x: np.ndarray, terms: NoiseTerms, labels: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        rows = self.DENOISE_ROWS
        if len(x) <= rows:
            return method(x, terms, labels, guidance)
        return np.concatenate([
            method(x[i : i + rows], terms, labels[i : i + rows], guidance[i : i + rows]) for i in range(0, len(x), rows)
        ])

    def _class_mix(self, x: np.ndarray, terms: NoiseTerms, labels: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        """sum_k p(k | x, c) (mu_k + W_k^T W_k (x - mu_k)) over the components of each row's class c, with each
        row's class table gathered: (B, (1 + rank) n, dim)."""
        table = terms.classes
        vectors = table.vectors.take(labels, axis=0)
        products = np.einsum("bd,bmd->bm", x, vectors)
        log_density, projected = self._log_densities(
            products, table.mean_projections.take(labels, axis=0), table.offsets.take(labels, axis=0), terms.a
        )
        return np.einsum("bm,bmd->bd", _weighted(_softmax(log_density), projected), vectors)

    def _mixture_mix(self, x: np.ndarray, terms: NoiseTerms, labels: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        """The same over the whole mixture, with guidance mixing the responsibilities: the mixture is linear in
        them, so D_uncond + w (D_cond - D_uncond) is the mixture under p_uncond + w (p_cond - p_uncond)."""
        table = terms.mixture
        log_density, projected = self._log_densities(
            np.einsum("bd,md->bm", x, table.vectors), table.mean_projections, table.offsets, terms.a
        )
        weights = _softmax(log_density)
        labelled = labels >= 0
        if labelled.any():
            # Unconditional rows keep every component, so that no row of `conditional` is empty.
            in_class = (self.component_class[None, :] == labels[:, None]) | ~labelled[:, None]
            conditional = _softmax(np.where(in_class, log_density, -np.inf))
            guided = weights + guidance[:, None] * (conditional - weights)
            weights = np.where(labelled[:, None], guided, weights)
        return np.einsum("bm,md->bd", _weighted(weights, projected), table.vectors)

    def _log_densities(
        self, products: np.ndarray, mean_projections: np.ndarray, offsets: np.ndarray, a: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """log N(x; mu_k, Sigma_k + sigma^2 I) + |x|^2 / (2 a), the part that depends on k, as (B, n), and
        W_k (x - mu_k) as (B, rank, n), from products = x . vectors (B, (1 + rank) n):
        |x - mu_k|^2 - |W_k (x - mu_k)|^2 = |x|^2 - 2 x . mu_k + |mu_k|^2 - |W_k x - W_k mu_k|^2."""
        products = products.reshape(len(products), 1 + self.config.rank, -1)
        projected = products[:, 1:] - mean_projections
        return offsets + (products[:, 0] + 0.5 * np.einsum("brk,brk->bk", projected, projected)) / a, projected

    def class_log_densities(self, x: np.ndarray) -> np.ndarray:
        """log p(x | c) under the data distribution, as (B, C)."""
        terms = self.noise_terms(0.0)
        table = terms.mixture
        log_density, _ = self._log_densities(np.einsum("bd,md->bm", x, table.vectors), table.mean_projections, table.offsets, terms.a)
        log_density -= (0.5 / terms.a) * np.einsum("bd,bd->b", x, x)[:, None]
        per_class = log_density.reshape(len(x), self.config.num_classes, self.config.components_per_class)
        return logsumexp(per_class) - math.log(self.config.components_per_class)

    def features(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(np.einsum("bd,df->bf", x, self._feature_table) + self.feature_bias)

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


def _weighted(weights: np.ndarray, projected: np.ndarray) -> np.ndarray:
    """(p_k, p_k W_k d_k) laid out like a ComponentTable's vectors: (B, n), (B, rank, n) -> (B, (1 + rank) n)."""
    return np.concatenate([weights[:, None], weights[:, None] * projected], axis=1).reshape(len(weights), -1)


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
