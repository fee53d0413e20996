"""lipctl export checkpoint=PATH format=onnx|torchscript: a policy or process model as a file
that runs without lipctl, with a parity check against torch and a JSON description."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from lipctl.agents.checkpoint import CheckpointError
from lipctl.agents.saved import load_exportable
from lipctl.config import require_choice, require_number, user_errors
from lipctl.control.export import FORMATS, PROCESS_MODEL, export_module, export_parity
from lipctl.envs.files import write_json
from lipctl.lipschitz.certificates import TIERS

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUTS = {  # what the exported input and output hold, by network kind
    "policy": ("observation", "action in the env's units"),
    PROCESS_MODEL: ("scaled sequence [states, inputs] over one sampling period",
                    "scaled states over the period (scalers in the model file)"),
}


def validate(cfg: DictConfig) -> None:
    if not Path(cfg.checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {cfg.checkpoint}")
    require_choice(cfg, "format", FORMATS)
    require_choice(cfg, "certificate_tier", TIERS)
    require_number(cfg, "tolerance", 0, exclusive=True)
    require_number(cfg, "torch_threads", 1, integer=True)


def output_path(cfg: DictConfig) -> Path:
    if cfg.out is not None:
        return Path(cfg.out)
    checkpoint = Path(cfg.checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIXES[cfg.format])


def export(cfg: DictConfig) -> Path:
    """Write the export and `<out>.json`; exit 1 if the export's parity is off."""
    torch.set_num_threads(cfg.torch_threads)
    network = load_exportable(cfg.checkpoint, cfg.certificate_tier)
    out = output_path(cfg)
    export_module(network.module, network.example, out, cfg.format)
    parity = export_parity(network.module, out, cfg.format, network.probes)
    with torch.no_grad():
        output_shape = list(network.module(network.example).shape)
    described, produced = INPUTS[network.kind]
    description = {
        "kind": network.kind, "checkpoint": str(cfg.checkpoint), "format": cfg.format,
        "env_id": network.env_id,
        "input": {"name": "input", "shape": list(network.example.shape), "holds": described},
        "output": {"name": "output", "shape": output_shape, "holds": produced},
        "certificate": network.certificate.to_dict(),
        "parity_max_abs_diff": parity, "parity_inputs": len(network.probes),
    }
    write_json(out.with_name(out.name + ".json"), description)
    certificate = network.certificate
    print(f"{out}: {network.kind} for {network.env_id}, {cfg.format}, input "
          f"{description['input']['shape']} -> output {output_shape}; max |exported - torch| "
          f"{parity:.2e} over {len(network.probes)} inputs; Lipschitz upper "
          f"{certificate.upper:.4g} ({certificate.method}), sampled lower {certificate.lower:.4g}")
    if not parity <= cfg.tolerance:
        print(f"lipctl export: the export differs from torch by {parity:.3g} > tolerance "
              f"{cfg.tolerance:g}", file=sys.stderr)
        sys.exit(1)
    return out


def main(cfg: DictConfig) -> None:
    with user_errors("lipctl export"):
        validate(cfg)
        export(cfg)
