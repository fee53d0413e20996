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


def gain_matrix(recurrent: Tensor, steps: int) -> Tensor:
    """The [steps, steps] lower-triangular Toeplitz matrix G[t, s] = ||R||^(t - s) for s <= t,
    where R is the recurrent weight (float64, entries >= 0)."""
    index = torch.arange(steps)
    lag = (index[:, None] - index[None, :]).double()
    return torch.where(lag >= 0, _norm(recurrent) ** lag.clamp(min=0), 0.0)


def sequence_gain(recurrent: Tensor, steps: int) -> float:
    """Exact spectral norm of `gain_matrix(recurrent, steps)`."""
    return float(torch.linalg.matrix_norm(gain_matrix(recurrent, steps), ord=2))


def sequence_upper_bound(model: ProcessModel, steps: int) -> float:
    """Upper bound on the Lipschitz constant of the model's map over `steps` time steps
    (math.inf where `model.recurrent_weights()` is None, as for the LSTM).

    For a stack of cells h^l_t = phi(A_l x^l_t + R_l h^l_{t-1} + b_l) from fixed h^l_0, with
    x^1 = z, x^l = h^{l-1}, y_t = C h^L_t + c and phi elementwise 1-Lipschitz (relu, tanh), two
    input sequences give ||dh^l_t|| <= ||A_l|| ||dx^l_t|| + ||R_l|| ||dh^l_{t-1}||, so the
    vector n^l_t = ||dh^l_t|| obeys n^l <= ||A_l|| G_l n^{l-1} entrywise, with n^0_t = ||dz_t||
    and G_l = `gain_matrix(R_l)`. G_l has non-negative entries, so the bounds compose:
    n^L <= M n^0 with M = prod_l ||A_l|| G_L ... G_1. Summing over t,
    ||dy||^2 = sum_t ||C dh^L_t||^2 <= ||C||^2 ||M n^0||^2, hence
        L <= ||C|| ||M||_2,
    all spectral norms exact (float64 SVD); for one cell this is ||A|| ||C|| ||G||_2. For the
    input-convex nets the doubled input [z, -z] meets W_1 = [W_+, W_-], so A_1 = W_+ - W_-,
    and ||A_1|| <= sqrt(2) ||W_1||; the exact ||A_1|| is used.
    """
    weights = model.recurrent_weights()
    if weights is None:
        return math.inf
    gain = torch.eye(steps, dtype=torch.float64)
    for input_weight, recurrent in zip(weights.inputs, weights.recurrents, strict=True):
        gain = _norm(input_weight) * gain_matrix(recurrent, steps) @ gain
    return float(_norm(weights.output) * torch.linalg.matrix_norm(gain, ord=2))


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
