"""The benchmarks' shared record: the machine block and the bench record every benchmark writes."""

from __future__ import annotations

import json

import torch
from omegaconf import OmegaConf

from lipctl.bench.kit import machine_info, write_bench_record


def test_machine_info_names_the_machine_and_takes_extra_fields():
    machine = machine_info(processes=2)
    assert machine["cpus"] >= 1 and machine["processor"] and machine["processes"] == 2
    assert machine["torch"] == torch.__version__
    assert machine["torch_threads"] == torch.get_num_threads()
    assert machine["gpu"] == (torch.cuda.get_device_name() if torch.cuda.is_available()
                              else "none")


def test_a_bench_record_holds_resolved_settings_machine_and_wall_time(tmp_path):
    exp = OmegaConf.create({"name": "toy", "seeds": [0, 1], "copy": "${name}"})
    path = tmp_path / "bench.json"
    write_bench_record(path, exp, 12.345, machine_info(processes=1), extra={"rows": 3})
    record = json.loads(path.read_text())
    assert record["settings"] == {"name": "toy", "seeds": [0, 1], "copy": "toy"}
    assert record["wall_seconds"] == 12.3 and record["machine"]["processes"] == 1
    assert record["extra"] == {"rows": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temp file left
