"""The pruning limit of global one-shot magnitude pruning, predicted before pruning.

Zhang, Zhang, Sun and Liu, "How Sparse Can We Prune A Deep Network: A Fundamental Limit Perspective",
NeurIPS 2024 (official code: QiaozheZhang/Global-One-shot-Pruning, ``cal_rate.py``). Around a trained
minimum w*, the sublevel set ``{w : L(w) ≤ L(w*) + ε}`` is locally an ellipsoid with semi-axes
``r_i = √(2ε/|λ_i|)`` (λ_i the eigenvalues of the loss Hessian). Pruning to the fraction ρ is
feasible while the pruned point w_ρ stays inside it; the kinematic formula turns this into a phase
transition at the ratio where the normalised squared Gaussian width of the ellipsoid, seen at the
distance ``R(ρ) = ‖w* − w_ρ‖₂``, equals ρ::

    gw(R) = Σ_j p(λ_j) · r_j² / (R² + r_j²),   r_j² = 2ε / |λ_j|,   predicted limit: gw(R(ρ)) = ρ.

How each piece is computed here:

- p(λ): the Hessian's spectral density by stochastic Lanczos quadrature (SLQ; Ubaru, Chen and Saad
  2017, as in PyHessian): ``probes`` Rademacher vectors, ``lanczos_steps`` Lanczos steps each with full
  reorthogonalisation, Hessian-vector products by double backward. The density is the Gauss
  quadrature itself: the Ritz values θ_j with weights τ_j² (the first components of the tridiagonal
  matrix's eigenvectors), averaged over probes. Each probe reproduces ``vᵀH^k v`` exactly for
  k < 2·steps, so with a Rademacher probe a diagonal Hessian's spectral moments come out exactly.
  The official code smooths the same nodes with a Gaussian kernel onto a grid and adds a mass at
  λ ≈ 0 for a count of "important" eigenvalues; neither is done here (the near-zero part of the
  spectrum already appears as Ritz nodes near zero, whose term in gw is ≈ 1).
- The Hessian is taken of the mean cross-entropy over ``hessian_samples`` training samples, in eval
  mode (BatchNorm uses its running statistics), with respect to the weights that magnitude pruning
  prunes (:func:`~slimmer.structures.unstructured.prunable_weights`: Conv/Linear weights; the official
  code uses every trainable parameter, biases and norms included: a small fraction of D).
- ε: the sample standard deviation of the per-batch mean training loss over ``loss_batches`` batches
  (the official code uses every training batch).
- R(ρ): the norm of the ``round(ρ·D)`` smallest-magnitude weights, i.e. the distance to the global
  magnitude-pruned weights of :func:`~slimmer.structures.unstructured.unstructured_masks` (ignoring its
  one-weight-per-layer guard against layer collapse, which only matters at ratios near 1).
- The limit: d(k) = gw(R_k) − k/D is non-increasing in k (R grows, gw falls) and d(0) = 1, so the
  predicted limit is k*/D for the largest k* with d(k*) ≥ 0, found by bisection over the integers.

Memory: the Lanczos basis holds ``lanczos_steps × D`` numbers (float64 up to 64 M of them, float32
beyond). Cost: ``lanczos_steps × probes`` Hessian-vector products over ``hessian_samples`` samples
(each about four forward passes) plus ``loss_batches`` forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimmer.errors import ConfigError, InputError
from slimmer.structures.unstructured import prunable_weights
from slimmer.train.data import Dataset

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
MatVec = Callable[[torch.Tensor], torch.Tensor]
BREAKDOWN = 1e-5  # relative size of a Lanczos residual at which the Krylov space counts as exhausted
FLOAT64_BASIS = 64 * 2**20  # basis entries kept in float64; above this the basis is float32


@dataclass(frozen=True)
class LimitConfig:
    """Options of :func:`estimate_limit`; validated on construction (:class:`ConfigError`)."""

    lanczos_steps: int = 100
    probes: int = 1
    batch_size: int = 128
    hessian_samples: int = 128
    loss_batches: int = 200
    curve_points: int = 21
    seed: int = 0

    def __post_init__(self) -> None:
        minimum = {
            "lanczos_steps": 2,
            "probes": 1,
            "batch_size": 1,
            "hessian_samples": 1,
            "loss_batches": 2,
            "curve_points": 2,
            "seed": 0,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be an integer ≥ {low}, got {value!r}")


@dataclass(frozen=True)
class Spectrum:
    """A discrete spectral density: eigenvalue ``nodes`` with probability ``weights`` (summing to 1)."""

    nodes: tuple[float, ...]
    weights: tuple[float, ...]

    def moment(self, k: int) -> float:
        """``Σ_j p_j·λ_j^k``: an estimate of ``tr(H^k)/D``."""
        return sum(w * n**k for n, w in zip(self.nodes, self.weights, strict=False))


@dataclass(frozen=True)
class CurvePoint:
    """One point of the curve: pruning ``ratio`` ρ, distance ``R`` = ‖w − w_ρ‖₂, width ``gw`` = gw(R(ρ))."""

    ratio: float
    R: float
    gw: float


@dataclass(frozen=True)
class LimitResult:
    """The predicted limit (a fraction of the D prunable weights) and what it was computed from."""

    limit: float
    epsilon: float
    loss_mean: float
    weights: int
    spectrum: Spectrum
    curve: tuple[CurvePoint, ...]
    config: LimitConfig

    def to_dict(self) -> dict:
        return {
            "limit": self.limit,
            "epsilon": self.epsilon,
            "loss_mean": self.loss_mean,
            "weights": self.weights,
            "trace_per_weight": self.spectrum.moment(1),
            "spectrum": {"nodes": list(self.spectrum.nodes), "weights": list(self.spectrum.weights)},
            "curve": [asdict(p) for p in self.curve],
            "config": asdict(self.config),
        }


def lanczos(
    matvec: MatVec, dim: int, steps: int, probe: torch.Tensor, dtype: torch.dtype = torch.float64
) -> tuple[list[float], list[float]]:
    """Lanczos tridiagonalisation of a symmetric operator from ``probe`` (dim,), with full
    reorthogonalisation (twice per step). Returns the diagonal (≤ ``steps`` entries) and the
    off-diagonal (one fewer). Stops early when the Krylov space is exhausted (residual below
    ``BREAKDOWN`` times the largest coefficient seen)."""
    steps = min(steps, dim)
    basis = torch.empty((steps, dim), dtype=dtype)
    v = probe.to(dtype) / probe.to(dtype).norm()
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    for j in range(steps):
        basis[j] = v
        w = matvec(v).to(dtype)
        alpha = float(torch.dot(w, v))
        w = w - alpha * v - (betas[-1] * basis[j - 1] if j else 0.0)
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        alphas.append(alpha)
        scale = max(scale, abs(alpha), *(abs(b) for b in betas[-1:]))
        if j == steps - 1:
            break
        beta = float(w.norm())
        if beta <= BREAKDOWN * scale:
            break
        betas.append(beta)
        v = w / beta
    return alphas, betas


def slq(matvec: MatVec, dim: int, steps: int, probes: int, seed: int = 0) -> Spectrum:
    """Stochastic Lanczos quadrature with Rademacher probes: the Gauss-quadrature nodes (Ritz values)
    and weights of every probe, each probe's weights scaled by 1/probes."""
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if min(steps, dim) * dim <= FLOAT64_BASIS else torch.float32
    nodes: list[float] = []
    weights: list[float] = []
    for _ in range(probes):
        probe = torch.randint(0, 2, (dim,), generator=gen, dtype=torch.float64) * 2 - 1
        alphas, betas = lanczos(matvec, dim, steps, probe, dtype)
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        theta, vecs = torch.linalg.eigh(t)
        nodes += theta.tolist()
        weights += (vecs[0] ** 2 / probes).tolist()
    return Spectrum(tuple(nodes), tuple(weights))


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy of the model's logits (the first output when it returns several)."""
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return F.cross_entropy(out, y)


Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def hessian_matvec(model: nn.Module, params: Sequence[nn.Parameter], batches: Batches, loss_fn: LossFn) -> MatVec:
    """``v ↦ H·v`` for the Hessian of the sample-weighted mean of ``loss_fn`` over ``batches`` with
    respect to ``params`` (flattened and concatenated in order), by double backward."""
    total = sum(len(x) for x, _ in batches)
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        chunks = [c.view(s).to(p.dtype) for c, s, p in zip(torch.split(v, sizes), shapes, params, strict=False)]
        out = torch.zeros_like(v)
        with torch.enable_grad():
            for x, y in batches:
                grads = torch.autograd.grad(loss_fn(model, x, y), params, create_graph=True)
                dot = sum((g * c).sum() for g, c in zip(grads, chunks, strict=False))
                hv = torch.autograd.grad(dot, params)
                out += (len(x) / total) * torch.cat([h.reshape(-1) for h in hv]).to(v.dtype)
        return out

    return matvec


@torch.no_grad()
def loss_spread(model: nn.Module, batches: Batches, loss_fn: LossFn) -> tuple[float, float]:
    """Mean and sample standard deviation of the per-batch loss (needs ≥ 2 batches)."""
    losses = torch.tensor([float(loss_fn(model, x, y)) for x, y in batches], dtype=torch.float64)
    return float(losses.mean()), float(losses.std())


def removed_norms(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``R_k`` for k = 0…D: the norm of the k smallest-magnitude entries of all ``weights`` together,
    float64 (D+1,), i.e. ‖w − w_ρ‖₂ of global magnitude pruning at ρ = k/D."""
    flat = torch.cat([w.detach().reshape(-1).to(torch.float64) for w in weights])
    squares = flat.abs().sort().values ** 2
    return torch.cat([torch.zeros(1, dtype=torch.float64), squares.cumsum(0)]).sqrt()


def gaussian_width(spectrum: Spectrum, R: float, epsilon: float) -> float:
    """``gw(R) = Σ_j p_j · r_j²/(R² + r_j²)`` with ``r_j² = 2ε/|λ_j|``, normalised by ``Σ_j p_j``.

    Written as ``2ε/(R²|λ| + 2ε)``: a zero eigenvalue (infinite semi-axis) contributes p_j, and
    ``R = 0`` gives 1. ``epsilon`` must be ≥ 0."""
    nodes = torch.tensor(spectrum.nodes, dtype=torch.float64).abs()
    p = torch.tensor(spectrum.weights, dtype=torch.float64)
    den = R * R * nodes + 2 * epsilon
    terms = torch.where(den > 0, 2 * epsilon / torch.where(den > 0, den, 1.0), 1.0)
    return float((p * terms).sum() / p.sum())


def solve_limit(norms: torch.Tensor, spectrum: Spectrum, epsilon: float) -> float:
    """The largest ρ = k/D with gw(R_k) ≥ ρ (``norms`` = ``R_k`` for k = 0…D, as from
    :func:`removed_norms`); gw(R_k) − k/D is non-increasing, so bisection finds it exactly."""
    d = len(norms) - 1
    lo, hi = 0, d  # invariant: lo satisfies gw ≥ k/D; every k > hi does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if gaussian_width(spectrum, float(norms[mid]), epsilon) >= mid / d:
            lo = mid
        else:
            hi = mid - 1
    return lo / d


def _batches(data: Dataset, start: int, count: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    assert data.y is not None
    return [(data.x[i : i + batch_size], data.y[i : i + batch_size]) for i in range(start, start + count, batch_size)]


def _check_data(model: nn.Module, data: Dataset, config: LimitConfig, loss_fn: LossFn) -> None:
    if data.y is None:
        raise InputError(
            f"{data.source}: the limit estimate needs labels (the loss is cross-entropy)",
            hint="give data with labels (an .npz with 'y', IDX labels, class folders)",
        )
    if len(data) < 2 * config.batch_size:
        raise InputError(
            f"{data.source}: {len(data)} training samples make fewer than 2 batches of {config.batch_size}; "
            "the loss spread ε needs at least 2",
            hint="pass a smaller --batch-size or more data",
        )
    with torch.no_grad():
        out = model(data.x[:2])
    out = out[0] if isinstance(out, (tuple, list)) else out
    if loss_fn is cross_entropy and (out.ndim != 2 or int(data.y.max()) >= out.shape[1] or int(data.y.min()) < 0):
        raise InputError(
            f"{data.source}: labels {int(data.y.min())}…{int(data.y.max())} do not fit the model's output of "
            f"shape {tuple(out.shape)} (expected class logits)"
        )


def estimate_limit(
    model: nn.Module,
    train: Dataset,
    config: LimitConfig | None = None,
    *,
    loss_fn: LossFn = cross_entropy,
    progress: Callable[[str], None] | None = None,
) -> LimitResult:
    """Predict the pruning limit of global one-shot magnitude pruning for a trained ``model`` (eval
    mode, CPU tensors) from its labelled training split ``train``. The model is left unchanged.

    Raises :class:`InputError` for unlabelled data, labels that do not fit the logits, fewer than two
    batches or a model without Conv/Linear weights; :class:`ConfigError` for bad options."""
    config = config or LimitConfig()
    say = progress or (lambda message: None)
    weights = prunable_weights(model)
    if not weights:
        raise InputError("the model has no Conv/Linear weights: there is nothing for magnitude pruning to prune")
    params = list(weights.values())
    was_training = model.training
    flags = [p.requires_grad for p in params]
    model.eval()
    try:
        _check_data(model, train, config, loss_fn)
        n_loss = min(config.loss_batches, len(train) // config.batch_size) * config.batch_size
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
        order = order[: max(n_loss, config.hessian_samples)]
        shuffled = Dataset(train.x[order], train.y[order], train.source)  # type: ignore[index]
        say(f"loss spread over {n_loss // config.batch_size} batches of {config.batch_size}")
        loss_mean, epsilon = loss_spread(model, _batches(shuffled, 0, n_loss, config.batch_size), loss_fn)
        if not (math.isfinite(loss_mean) and math.isfinite(epsilon)):
            raise InputError(f"{train.source}: the training loss is not finite; the model or the data is broken")
        for p in params:
            p.requires_grad_(True)
        hess = _batches(shuffled, 0, min(config.hessian_samples, len(shuffled)), config.batch_size)
        dim = sum(p.numel() for p in params)
        say(
            f"Hessian spectrum: {config.probes} probe(s) × {config.lanczos_steps} Lanczos steps over "
            f"{sum(len(x) for x, _ in hess)} samples, {dim:,} weights"
        )
        matvec = hessian_matvec(model, params, hess, loss_fn)
        spectrum = slq(matvec, dim, config.lanczos_steps, config.probes, config.seed)
    finally:
        for p, flag in zip(params, flags, strict=False):
            p.requires_grad_(flag)
        model.train(was_training)
    norms = removed_norms(params)
    curve = []
    for i in range(config.curve_points):
        ratio = i / (config.curve_points - 1)
        R = float(norms[int(round(ratio * dim))])
        curve.append(CurvePoint(ratio=ratio, R=R, gw=gaussian_width(spectrum, R, epsilon)))
    limit = solve_limit(norms, spectrum, epsilon)
    return LimitResult(
        limit=limit,
        epsilon=epsilon,
        loss_mean=loss_mean,
        weights=dim,
        spectrum=spectrum,
        curve=tuple(curve),
        config=config,
    )
