"""Lipschitz toolkit: constrained layers, soft regularisers and certificates."""

from lipctl.lipschitz.aol import AOLLinear  # each family module registers itself
from lipctl.lipschitz.certificates import (
    TIERS,
    Certificate,
    certify,
    construction_bound,
    eclipse_fast_bound,
    lipsdp_bound,
    lower_bound,
    mlp_layers,
    pair_ratio_ascent,
    upper_bound,
)
from lipctl.lipschitz.chained import ChainedLinear, LDLLinear, SandwichLinear
from lipctl.lipschitz.family import (
    FAMILIES,
    LipschitzLinear,
    layer_family,
    post_step,
    register_family,
    shared_weights,
    takes_option,
)
from lipctl.lipschitz.layers import GroupSort, MaxMin, freeze, lipschitz_mlp
from lipctl.lipschitz.lipsdp import (
    certified_rho,
    check_lmi,
    eclipse_fast_multipliers,
    lipsdp_matrix,
    lipsdp_multipliers,
)
from lipctl.lipschitz.orthogonal import OrthogonalLinear
from lipctl.lipschitz.projections import HammerLinear, ProjectedLinear, SoftCapLinear, SVDClipLinear
from lipctl.lipschitz.regularizers import (
    adversarial_perturbation,
    gradient_penalty,
    input_gradient_norm,
    interpolate,
    project_to_ball,
    robust_loss,
)
from lipctl.lipschitz.spec import LipschitzSpec
from lipctl.lipschitz.spectral import SpectralLinear

__all__ = [
    "AOLLinear",
    "FAMILIES",
    "TIERS",
    "Certificate",
    "ChainedLinear",
    "GroupSort",
    "HammerLinear",
    "LDLLinear",
    "LipschitzLinear",
    "LipschitzSpec",
    "MaxMin",
    "OrthogonalLinear",
    "ProjectedLinear",
    "SVDClipLinear",
    "SandwichLinear",
    "SoftCapLinear",
    "SpectralLinear",
    "adversarial_perturbation",
    "certified_rho",
    "certify",
    "construction_bound",
    "check_lmi",
    "eclipse_fast_bound",
    "eclipse_fast_multipliers",
    "freeze",
    "layer_family",
    "post_step",
    "register_family",
    "shared_weights",
    "takes_option",
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
