"""Lipschitz toolkit: constrained layers, soft regularisers and certificates."""

from lipctl.lipschitz.certificates import (
    TIERS,
    Certificate,
    certify,
    eclipse_fast_bound,
    lipsdp_bound,
    lower_bound,
    mlp_layers,
    pair_ratio_ascent,
    upper_bound,
)
from lipctl.lipschitz.layers import (
    GroupSort,
    MaxMin,
    SpectralLinear,
    freeze_spectral,
    lipschitz_mlp,
    shared_spectral_weights,
)
from lipctl.lipschitz.lipsdp import (
    certified_rho,
    check_lmi,
    eclipse_fast_multipliers,
    lipsdp_matrix,
    lipsdp_multipliers,
)
from lipctl.lipschitz.regularizers import (
    adversarial_perturbation,
    gradient_penalty,
    input_gradient_norm,
    interpolate,
    project_to_ball,
    robust_loss,
)

__all__ = [
    "TIERS",
    "Certificate",
    "GroupSort",
    "MaxMin",
    "SpectralLinear",
    "adversarial_perturbation",
    "certified_rho",
    "certify",
    "check_lmi",
    "eclipse_fast_bound",
    "eclipse_fast_multipliers",
    "freeze_spectral",
    "shared_spectral_weights",
    "gradient_penalty",
    "input_gradient_norm",
    "interpolate",
    "lipschitz_mlp",
    "lipsdp_bound",
    "lipsdp_matrix",
    "lipsdp_multipliers",
    "lower_bound",
    "mlp_layers",
    "pair_ratio_ascent",
    "project_to_ball",
    "robust_loss",
    "upper_bound",
]
