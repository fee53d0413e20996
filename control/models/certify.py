"""Lipschitz certificates of a process model's sequence map z [T, n] -> y [T, m] (l2 norms over
the whole sequence): an upper bound from the weights and a sampled lower bound."""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import Tensor

from lipctl.control.models.base import ProcessModel
from lipctl.lipschitz.certificates import Certificate, pair_ratio_ascent


def _norm(matrix: Tensor) -> Tensor:
    return torch.linalg.matrix_norm(matrix.double(), ord=2)


def sequence_gain(recurrent: Tensor, steps: int) -> float:
    """Exact spectral norm of the [steps, steps] lower-triangular Toeplitz matrix
    G[t, s] = ||R||^(t - s) for s <= t, where R is the recurrent weight."""
    index = torch.arange(steps)
    lag = (index[:, None] - index[None, :]).double()
    gain = torch.where(lag >= 0, _norm(recurrent) ** lag.clamp(min=0), 0.0)
    return float(torch.linalg.matrix_norm(gain, ord=2))


def sequence_upper_bound(model: ProcessModel, steps: int) -> float:
    """Upper bound on the Lipschitz constant of the model's map over `steps` time steps
    (math.inf where `model.recurrent_weights()` is None, as for the LSTM).

    For h_t = phi(A z_t + R h_{t-1} + b) from a fixed h_0, y_t = C h_t + c and phi elementwise
    1-Lipschitz (relu, tanh), two input sequences differing by dz_t give
    ||dh_t|| <= ||A|| ||dz_t|| + ||R|| ||dh_{t-1}||, so ||dh_t|| <= ||A|| (G e)_t with
    e_s = ||dz_s|| and G as in `sequence_gain`. Summing over t,
    ||dy||^2 = sum_t ||C dh_t||^2 <= ||C||^2 ||A||^2 ||G e||^2, hence
        L <= ||A|| ||C|| ||G||_2,
    all spectral norms exact (float64 SVD). For the input-convex nets the doubled input
    [z, -z] meets W = [W_+, W_-], so A = W_+ - W_- = W [I; -I] and ||A|| <= sqrt(2) ||W||; the
    exact ||A|| is used. With every norm <= 1 this gives L <= sqrt(2) ||G||_2 <= sqrt(2) T.
    """
    weights = model.recurrent_weights()
    if weights is None:
        return math.inf
    norms = _norm(weights.input) * _norm(weights.output)
    return float(norms) * sequence_gain(weights.recurrent, steps)


def sequence_lower_bound(model: ProcessModel, z: Tensor, pairs: int = 128, steps: int = 100,
                         lr: float = 0.05, seed: int = 0) -> float:
    """Largest ratio ||f(z1) - f(z2)|| / ||z1 - z2|| found by ascent on pairs of sequences.

    Pairs start at a data sequence z1 [T, n] and either another data sequence or a nearby
    point, at least 1e-3 apart. The model runs on a float64 copy of its weights, so each ratio
    is attained by the model and lies below its true Lipschitz constant.
    """
    net = copy.deepcopy(model).double().eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    data = z.detach().to("cpu", torch.float64)
    shape = data.shape[1:]
    z1 = data[torch.randint(len(data), (pairs,), generator=generator)]
    other = data[torch.randint(len(data), (pairs,), generator=generator)]
    nearby = z1 + 0.1 * torch.randn(z1.shape, generator=generator, dtype=torch.float64)
    z2 = torch.where(torch.arange(pairs)[:, None, None] % 2 == 0, nearby, other)

    def flat_model(rows: Tensor) -> Tensor:
        return net(rows.view(-1, *shape)).flatten(1)

    return pair_ratio_ascent(flat_model, z1.flatten(1), z2.flatten(1), steps=steps, lr=lr,
                             min_gap=1e-3, generator=generator)


def certify_model(model: ProcessModel, z: Tensor, pairs: int = 128, steps: int = 100,
                  seed: int = 0) -> Certificate:
    """Certificate of the sequence map at the length of `z` [N, T, n]: the weight bound and the
    sampled lower bound started from the rows of z, and the seconds both took."""
    start = time.perf_counter()
    upper = sequence_upper_bound(model, z.shape[1])
    lower = sequence_lower_bound(model, z, pairs=pairs, steps=steps, seed=seed)
    method = "recurrent spectral product" if math.isfinite(upper) else "none (no weight bound)"
    return Certificate(upper, lower, method, time.perf_counter() - start)
