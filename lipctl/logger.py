"""One logging facade: CSV always, TensorBoard and wandb (offline by default) as backends."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lipctl.envs.files import atomic_write, writing

BACKENDS = ("csv", "tensorboard", "wandb")


def _to_floats(metrics: Mapping[str, float | Tensor | None]) -> dict[str, float]:
    """Plain floats, with all tensors brought to the host in one transfer; None is dropped."""
    tensors = {k: v for k, v in metrics.items() if isinstance(v, Tensor)}
    values = {k: float(v) for k, v in metrics.items() if v is not None and k not in tensors}
    if tensors:
        stacked = torch.stack([t.detach().float().reshape(()) for t in tensors.values()])
        values.update(zip(tensors, stacked.cpu().tolist(), strict=True))
    return values


def run_name(cfg: Mapping[str, Any]) -> str:
    """A run's name for tracking backends, from what sets it apart from its neighbours:
    `<env id>/<variant, or agent-lipschitz[-L<bound>]>/seed<seed>`."""
    label = cfg.get("variant") or f"{cfg['agent']['name']}-{cfg['lipschitz']['name']}"
    bound = cfg["lipschitz"].get("L")
    if bound is not None and f"L{bound}" not in label:
        label += f"-L{bound:g}"
    return f"{cfg['env']['id']}/{label}/seed{cfg['seed']}"


class CsvWriter:
    """One CSV per metric group with a `step` column, flushed on every row.

    Given `resume_step`, rows logged after that step (by a run that died after its last
    checkpoint) are dropped, so a resumed run neither loses nor duplicates rows.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.run_dir = run_dir
        self.columns: dict[str, list[str]] = {}
        for path in sorted(run_dir.glob("*.csv")):
            rows = self._read(path)
            if resume_step is not None:
                rows = [r for r in rows if int(r["step"]) <= resume_step]
            columns = list(rows[0]) if rows else self._header(path)
            self._write(path, columns, rows)
            self.columns[path.stem] = columns

    @staticmethod
    def _read(path: Path) -> list[dict[str, str]]:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))

    @staticmethod
    def _header(path: Path) -> list[str]:
        with path.open(newline="") as f:
            return next(csv.reader(f), ["step"])

    @staticmethod
    def _write(path: Path, columns: list[str], rows: list[dict]) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(path, lambda f: f.write(text.getvalue().encode()))

    def write(self, group: str, step: int, values: Mapping[str, float]) -> None:
        path = self.run_dir / f"{group}.csv"
        columns = self.columns.get(group)
        if columns is None or not set(values) <= set(columns):
            columns = (columns or ["step"]) + [k for k in values if k not in (columns or [])]
            self._write(path, columns, self._read(path) if path.exists() else [])
            self.columns[group] = columns
        with writing(path), path.open("a", newline="") as f:
            csv.DictWriter(f, columns, restval="").writerow({"step": step, **values})


class Logger:
    """Sends metric groups to every configured backend; see `BACKENDS`."""

    def __init__(
        self,
        run_dir: str | Path,
        backends: Sequence[str] = ("csv",),
        resume_step: int | None = None,
        config: dict | None = None,
        run_name: str | None = None,
        wandb_project: str = "lipctl",
        wandb_mode: str = "offline",
        wandb_id: str | None = None,
    ):
        unknown = set(backends) - set(BACKENDS)
        if unknown:
            raise ValueError(f"unknown logger backend(s) {sorted(unknown)}; choose from {BACKENDS}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv = CsvWriter(self.run_dir, resume_step)
        self.tensorboard = None
        self.wandb_run = None
        if "tensorboard" in backends:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)
        if "wandb" in backends:
            import wandb

            self.wandb_run = wandb.init(
                project=wandb_project, dir=str(self.run_dir), mode=wandb_mode, id=wandb_id,
                resume="allow", config=config, name=run_name, reinit="create_new",
            )
            self.wandb_run.define_metric("*", step_metric="env_step")

    @property
    def wandb_id(self) -> str | None:
        return None if self.wandb_run is None else self.wandb_run.id

    def log(self, group: str, step: int, metrics: Mapping[str, float | Tensor | None]) -> None:
        values = _to_floats(metrics)
        self.csv.write(group, step, values)
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(f"{group}/{key}", value, step)
        if self.wandb_run is not None:
            self.wandb_run.log({"env_step": step, **{f"{group}/{k}": v for k, v in values.items()}})

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
