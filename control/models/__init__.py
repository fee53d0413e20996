"""Process models of a plant's state over one sampling period: input-convex (Lipschitz) RNNs and
recurrent baselines, one trainer, Lipschitz certificates and save/load as data."""

from lipctl.control.models.base import ProcessModel, RecurrentWeights
from lipctl.control.models.baselines import LSTM, RNN
from lipctl.control.models.casadi_model import casadi_model
from lipctl.control.models.certify import (
    certify_model,
    sequence_gain,
    sequence_lower_bound,
    sequence_upper_bound,
)
from lipctl.control.models.convex import ICLRNN, ICRNN, InputConvexRNN
from lipctl.control.models.io import TrainedModel, load_model, save_model
from lipctl.control.models.registry import MODELS, build_model, register_model
from lipctl.control.models.train import FitResult, fit, fit_and_save, mse, mse_in

__all__ = [
    "ICLRNN",
    "ICRNN",
    "LSTM",
    "MODELS",
    "RNN",
    "FitResult",
    "InputConvexRNN",
    "ProcessModel",
    "RecurrentWeights",
    "TrainedModel",
    "build_model",
    "casadi_model",
    "certify_model",
    "fit",
    "fit_and_save",
    "load_model",
    "mse",
    "mse_in",
    "register_model",
    "save_model",
    "sequence_gain",
    "sequence_lower_bound",
    "sequence_upper_bound",
]
