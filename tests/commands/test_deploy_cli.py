"""lipctl export, deploy and plant serve end to end, and their users' mistakes."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from lipctl.agents.checkpoint import save_checkpoint
from lipctl.agents.sac import SAC
from lipctl.agents.saved import load_exportable
from lipctl.control.models import build_model, certify_model, load_model, save_model
from lipctl.control.models.certify import sequence_upper_bound
from lipctl.control.process_data import generate
from lipctl.envs.cstr import CSTR
from lipctl.envs.quadtank import quadtank_process
from tests.helpers import assert_user_error, config_error, lipctl


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """An untrained SAC policy checkpoint for Pendulum-v1 and untrained ICLRNNs of the CSTR and
    of the quadruple tank."""
    folder = tmp_path_factory.mktemp("deploy")
    torch.manual_seed(0)
    agent = SAC(3, 1, hidden=[16, 16])
    learner = {"_target_": "lipctl.agents.sac.SAC", "hidden": [16, 16]}
    save_checkpoint(folder / "policy.pt", {
        "agent": agent.state_dict(), "step": 0, "certificates": {},
        "config": {"env": {"id": "Pendulum-v1"}, "agent": {"learner": learner}}})
    data = generate(CSTR, states_per_axis=3, inputs_per_axis=2, chains=2, periods=2, seed=0)
    save_model(folder / "iclrnn.pt", build_model("iclrnn", 2, 2, hidden=8), data)
    tanks = generate(quadtank_process(), states_per_axis=2, inputs_per_axis=2, chains=2,
                     periods=2, seed=0)
    save_model(folder / "quadtank-iclrnn.pt", build_model("iclrnn", 4, 2, hidden=8), tanks)
    return folder


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_policy_to_onnx_and_process_model_to_torchscript(files):
    result = lipctl("export", "checkpoint=policy.pt", "format=onnx", cwd=files, check=True)
    assert "policy.onnx: policy for Pendulum-v1" in result.stdout
    described = json.loads((files / "policy.onnx.json").read_text())
    assert described["input"]["shape"] == [1, 3] and described["output"]["shape"] == [1, 1]
    assert described["parity_max_abs_diff"] < 1e-5
    # the exported file computes the policy in the env's action units
    network = load_exportable(files / "policy.pt")
    assert described["certificate"]["upper"] == pytest.approx(network.certificate.upper)
    session = onnxruntime.InferenceSession(str(files / "policy.onnx"),
                                           providers=["CPUExecutionProvider"])
    observation = np.array([[0.3, -0.9, 4.0]], dtype=np.float32)
    action = session.run(["output"], {"input": observation})[0]
    with torch.no_grad():
        expected = network.module(torch.from_numpy(observation)).numpy()
    np.testing.assert_allclose(action, expected, atol=1e-6)
    assert np.all(np.abs(action) <= 2.0)  # Pendulum-v1 torque bounds

    lipctl("export", "checkpoint=iclrnn.pt", "format=torchscript", "out=model.ts", cwd=files,
           check=True)
    described = json.loads((files / "model.ts.json").read_text())
    assert described["kind"] == "process model" and described["input"]["shape"] == [1, 10, 4]
    loaded = torch.jit.load(str(files / "model.ts"))
    assert loaded(torch.zeros(1, 10, 4)).shape == (1, 10, 2)


def test_a_process_model_deploys_with_the_certificate_saved_at_fit_time(tmp_path):
    """Deploy and MPC read one certificate for one file: the one `lipctl fit` saved."""
    data = generate(CSTR, states_per_axis=3, inputs_per_axis=2, chains=2, periods=2, seed=0)
    torch.manual_seed(1)
    model = build_model("iclrnn", 2, 2, hidden=8)
    z, _ = data.sequences("test")
    saved = certify_model(model, torch.from_numpy(z[:64]), pairs=16, steps=5, seed=3)
    save_model(tmp_path / "fitted.pt", model, data, saved)
    network = load_exportable(tmp_path / "fitted.pt")
    assert network.certificate == saved == load_model(tmp_path / "fitted.pt").certificate
    save_model(tmp_path / "bare.pt", model, data)  # a file that holds no certificate
    computed = load_exportable(tmp_path / "bare.pt").certificate
    assert computed.upper == pytest.approx(sequence_upper_bound(model, data.substeps))
    assert 0 < computed.lower <= computed.upper


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_deploy_first_principles_mpc_on_the_cstr(files):
    lipctl("deploy", "controller=mpc", "steps=20", "out=mpc_run", cwd=files,
           check=True)
    summary = json.loads((files / "mpc_run" / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["fallbacks"] == 0 and summary["final_in_target"]
    records = _records(files / "mpc_run")
    assert [r["step"] for r in records] == list(range(20))
    assert records[0]["measurement"] == [1.5, -70.0]


@pytest.mark.slow
def test_deploy_policy_through_the_lipschitz_gate(files):
    upper = load_exportable(files / "policy.pt").certificate.upper
    lipctl("deploy", "controller=policy", "checkpoint=policy.pt", "plant=gym", "steps=5",
           f"lipschitz_max={1.01 * upper}", "out=policy_run", cwd=files, check=True)
    summary = json.loads((files / "policy_run" / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["certificate"]["upper"] == pytest.approx(upper)
    refused = lipctl("deploy", "controller=policy", "checkpoint=policy.pt", "plant=gym",
                     f"lipschitz_max={0.99 * upper}", "out=refused_run", cwd=files)
    assert_user_error(refused, "deployment refused: certified Lipschitz upper bound")
    assert not (files / "refused_run").exists()


@pytest.mark.slow
def test_deploy_over_opcua_against_lipctl_plant_serve(files):
    command = [sys.executable, "-m", "lipctl", "plant", "serve", "port=0", "period_s=0.1"]
    server = subprocess.Popen(command, cwd=files, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([server.stdout], [], [], 60)
        assert ready, "lipctl plant serve printed nothing"
        line = server.stdout.readline().split()
        assert line[0] == "serving", line
        lipctl("deploy", "plant=opcua", f"plant.url={line[1]}", "steps=40", "fallback=mpc",
               "out=opcua_run", cwd=files, check=True)
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0 and "Traceback" not in err, err
    summary = json.loads((files / "opcua_run" / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["plant"] == "opcua"
    assert summary["reconnects"] == summary["failed_reads"] == summary["failed_writes"] == 0
    assert summary["period_s"] == 0.1  # read from the server
    assert summary["period"]["p50"] == pytest.approx(0.1, abs=0.02)
    assert summary["final_in_target"]
    stopped = out.split()
    assert stopped[:2] == ["stopped", "at"] and CSTR.in_target(np.array(stopped[2:4], float))


@pytest.mark.slow
def test_deploy_mpc_on_the_quadruple_tank_to_another_operating_point(files):
    lipctl("deploy", "controller=mpc", "env=quadtank", "controller.horizon=10",
           "controller.setpoint=high", "steps=40", "out=tank_run", cwd=files, check=True)
    summary = json.loads((files / "tank_run" / "summary.json").read_text())
    assert summary["env_id"] == "lipctl/QuadTank-v0" and summary["final_in_target"]
    high = quadtank_process().operating_points["high"][0]
    final = np.asarray(_records(files / "tank_run")[-1]["measurement"])
    assert quadtank_process().in_target(final, high)


@pytest.mark.slow
def test_ctrl_c_stops_deploy_with_a_summary_of_the_logged_steps(files):
    command = [sys.executable, "-m", "lipctl", "deploy", "steps=100000", "plant.realtime=true",
               "plant.period_s=0.02", "out=interrupted_run"]
    run = subprocess.Popen(command, cwd=files, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    ready, _, _ = select.select([run.stdout], [], [], 60)
    assert ready and run.stdout.readline().startswith("deploying mpc")
    log, deadline = files / "interrupted_run" / "steps.jsonl", time.monotonic() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 10):
        assert time.monotonic() < deadline and run.poll() is None, "deploy logged no 10 steps"
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=30)
    assert run.returncode == 130 and "interrupted" in out and "Traceback" not in err, err
    summary = json.loads((files / "interrupted_run" / "summary.json").read_text())
    records = _records(files / "interrupted_run")
    assert summary["interrupted"] and 10 <= summary["steps"] == len(records) < 100000


CONFIG_MISTAKES = [
    (["export", "checkpoint=missing.pt"], "checkpoint not found: missing.pt"),
    (["deploy", "controller=mpc", "controller.solver={hessian:newton}"],
     "controller.solver: hessian must be one of"),
    (["deploy", "controller=mpc", "plant=gym"], "need a plant with a process description"),
]


@pytest.mark.parametrize(("args", "expected"), CONFIG_MISTAKES,
                         ids=[" ".join(args) for args, _ in CONFIG_MISTAKES])
def test_config_mistakes_are_refused_before_any_work(files, args, expected):
    assert expected in config_error(*args, cwd=files)


@pytest.mark.slow
def test_users_mistakes_are_one_line_and_exit_code_2(files):
    """Mistakes the config check does not find (a missing action word, files and a plant read
    at run time): still one line and exit code 2."""
    cases = [
        (["deploy", "controller=policy", "checkpoint=iclrnn.pt"], "needs a policy file"),
        (["deploy", "plant=opcua", "plant.url=opc.tcp://127.0.0.1:9/none"], "unavailable"),
        (["plant"], "missing action; choose from serve"),
        (["plant", "serve", "host=0.0.0.0"], "non-loopback host"),
        (["deploy", "controller=model_mpc", "checkpoint=quadtank-iclrnn.pt"],
         "models process 'quadtank', expected 'cstr'"),
        (["deploy", "controller=mpc", "env=quadtank", "controller.setpoint=top"],
         "no operating point 'top'"),
    ]
    for args, expected in cases:
        assert_user_error(lipctl(*args, cwd=files, timeout=120), expected)
