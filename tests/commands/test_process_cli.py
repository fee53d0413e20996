"""The process-control commands end to end: lipctl data -> fit -> mpc, and their bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lipctl.bench import process_mpc
from lipctl.envs.files import read_csv
from tests.helpers import assert_user_error, config_error, lipctl

TINY_DATA = ["states_per_axis=5", "inputs_per_axis=3", "chains=8", "periods=5"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny dataset and an ICLRNN fitted on it, made through the CLI."""
    folder = tmp_path_factory.mktemp("process")
    data = lipctl("data", "out=cstr.npz", *TINY_DATA, cwd=folder, check=True)
    assert "cstr.npz:" in data.stdout and "train" in data.stdout
    fit = lipctl("fit", "model=iclrnn", "data=cstr.npz", "out=iclrnn.pt", "epochs=3",
                 "model.hidden=8", cwd=folder, check=True)
    assert "test MSE" in fit.stdout and "Lipschitz upper" in fit.stdout
    return folder


@pytest.mark.slow
def test_fit_without_early_stopping_runs_every_epoch_of_a_stacked_model(fitted):
    result = lipctl("fit", "model=icrnn", "data=cstr.npz", "out=stacked.pt", "epochs=3",
                    "model.hidden=8", "model.layers=2", "patience=null", cwd=fitted, check=True)
    assert "best epoch 3" in result.stdout
    saved = torch.load(fitted / "stacked.pt", weights_only=True)
    assert saved["hparams"]["layers"] == 2 and "W.1" in saved["state_dict"]


@pytest.mark.slow
def test_first_principles_mpc_reaches_the_target(workdir):
    result = lipctl("mpc", "model=first_principles", "steps=20", cwd=workdir, check=True)
    assert "target reached at step" in result.stdout
    assert "fallbacks 0" in result.stdout


@pytest.mark.slow
def test_mpc_on_a_fitted_model_runs_the_closed_loop(fitted):
    result = lipctl("mpc", "model=iclrnn", "model_file=iclrnn.pt", "steps=3", cwd=fitted,
                    check=True)
    assert "cstr: iclrnn MPC (certified Lipschitz upper bound" in result.stdout
    assert "horizon 2 (MX graph, IPOPT, exact Hessian)" in result.stdout
    chosen = lipctl("mpc", "model=iclrnn", "model_file=iclrnn.pt", "steps=2",
                    "solver={symbolic:SX,hessian:limited-memory}", cwd=fitted, check=True)
    assert "(SX graph, IPOPT, limited-memory Hessian)" in chosen.stdout
    sqp = lipctl("mpc", "model=iclrnn", "model_file=iclrnn.pt", "steps=2",
                 "solver={symbolic:MX,method:sqp,hessian:gauss-newton}", cwd=fitted, check=True)
    assert "(MX graph, SQP, gauss-newton Hessian)" in sqp.stdout
    planned = lipctl("mpc", "model=iclrnn", "model_file=iclrnn.pt", "steps=2", "planner=mppi",
                     "planner.samples=64", cwd=fitted, check=True)
    assert "cstr: iclrnn MPC (certified Lipschitz upper bound" in planned.stdout
    assert "planner mppi H=2 samples=64" in planned.stdout


@pytest.mark.slow
def test_the_quadruple_tank_from_the_same_commands(fitted):
    """data -> fit -> mpc for a second process, chosen by env=quadtank alone."""
    lipctl("data", "env=quadtank", "states_per_axis=2", "inputs_per_axis=2", "chains=4",
           "periods=5", cwd=fitted, check=True)
    fit = lipctl("fit", "env=quadtank", "model=rnn", "epochs=2", "model.hidden=8", cwd=fitted,
                 check=True)
    assert "models/quadtank-rnn-noise0.0.pt: rnn of quadtank" in fit.stdout
    result = lipctl("mpc", "env=quadtank", "model=rnn", "steps=3", "horizon=2", cwd=fitted,
                    check=True)
    assert result.stdout.startswith("quadtank: rnn MPC (certified Lipschitz upper bound")
    assert "input-bound violations 0" in result.stdout
    refused = lipctl("mpc", "env=quadtank", "model=iclrnn", "model_file=iclrnn.pt",
                     cwd=fitted, timeout=120)
    assert_user_error(refused, "models process 'cstr', expected 'quadtank'")


BAD_PROCESS_INPUTS = [
    (["mpc", "horizon=0"], "horizon: must be >= 1"),
    (["mpc", "model=transformer"], "model/transformer"),
    (["mpc", "model=iclrnn", "model_file=missing.pt"], "model file not found"),
    (["mpc", "start=[1.0]"], "start: must hold 2 numbers"),
    (["mpc", "solver={symbolic:XX}"], "solver: symbolic must be one of"),
    (["mpc", "solver={jit:true,fast:1}"], "solver: got an unexpected keyword argument 'fast'"),
    (["mpc", "planner=mppi", "planner.samples=0"], "planner.samples: must be an integer"),
    (["mpc", "planner=cem", "contraction=true"], "contraction: applies to MPC solved by"),
    (["fit", "model=nosuch"], "model/nosuch"),
    (["fit", "data=missing.npz"], "data file not found"),
    (["data", "env=pendulum"], "env.process: this env has no process description"),
    (["data", "scaler=robust"], "scaler: must be one of standard, minmax"),
    (["bench", "experiment.mpc_seeds=0"], "experiment.mpc_seeds: must be"),
]


@pytest.fixture(scope="module")
def bad_files(fitted):
    """A model file of another plant, one that is no model, data with a non-finite target."""
    saved = torch.load(fitted / "iclrnn.pt", weights_only=True)
    torch.save({**saved, "plant_id": "lipctl/Other-v0"}, fitted / "other_plant.pt")
    (fitted / "garbage.pt").write_bytes(b"not a model")
    with np.load(fitted / "cstr.npz") as record:
        arrays = dict(record)
    arrays["targets"][0, 0, 0] = np.nan
    np.savez(fitted / "nonfinite.npz", **arrays)
    return fitted


@pytest.mark.slow  # the fitted model's fixture runs lipctl data and fit
@pytest.mark.parametrize(("args", "expected"), BAD_PROCESS_INPUTS,
                         ids=[" ".join(args) for args, _ in BAD_PROCESS_INPUTS])
def test_bad_process_inputs_are_refused_before_any_work(bad_files, args, expected):
    assert expected in config_error(*args, cwd=bad_files)


@pytest.mark.slow
def test_bad_files_are_refused_when_read_in_one_line_with_exit_code_2(bad_files):
    cases = [(["mpc", "model=iclrnn", "model_file=other_plant.pt"], "model_file:"),
             (["mpc", "model=iclrnn", "model_file=garbage.pt"], "model_file:"),
             (["fit", "data=nonfinite.npz", "out=x.pt"], "non-finite")]
    for args, expected in cases:
        assert_user_error(lipctl(*args, cwd=bad_files, timeout=120), expected)


TINY_BENCH = ["experiment.data.states_per_axis=10", "experiment.data.inputs_per_axis=3",
              "experiment.models=[iclrnn,rnn]", "experiment.noise=[0.0,0.5]",
              "experiment.seeds=[0,1]", "experiment.hidden=8", "experiment.epochs=3",
              "experiment.extra_models.iclrnn_1x64.hidden=4", "experiment.steps=3",
              "experiment.solve_time_steps=2", "experiment.budget_ms=[50]",
              "~experiment.solver_options",
              "+experiment.solver_options={sx:{},mx:{symbolic:MX},sqp:{method:sqp}}",
              "experiment.solver={default:mx,first_principles:sx}", "~experiment.budget_builds",
              "+experiment.budget_builds={ipopt:{default:mx,first_principles:sx},"
              "sqp:{default:sqp}}"]


def tiny_bench(work: str) -> list[str]:
    return ["bench", "experiment=cstr_mpc", "out=results/cstr_mpc", f"work={work}", *TINY_BENCH]


@pytest.mark.slow
def test_bench_cstr_mpc_writes_its_results_and_resumes(workdir):
    args = tiny_bench("work")
    lipctl(*args, cwd=workdir, check=True)
    out = workdir / "results" / "cstr_mpc"
    fits = out / "runs" / "nominal" / "models"
    runs = sorted(p.relative_to(fits).as_posix() for p in fits.glob("*/*"))
    assert runs == ["iclrnn/sigma0.0-seed0.json", "iclrnn/sigma0.0-seed1.json",
                    "iclrnn/sigma0.5-seed0.json", "iclrnn/sigma0.5-seed1.json",
                    "iclrnn_1x64/sigma0.0-seed0.json", "rnn/sigma0.0-seed0.json",
                    "rnn/sigma0.0-seed1.json", "rnn/sigma0.5-seed0.json",
                    "rnn/sigma0.5-seed1.json"]
    models = read_csv(out / "models.csv")
    stacked = [r for r in models if r["model"] == "iclrnn"]
    assert [(r["layers"], r["noise_sigma"], r["seeds"]) for r in stacked] == [
        ("2", "0.0", "2"), ("2", "0.5", "2")]
    assert all(float(r["test_mse_std"]) > 0 for r in stacked)
    # the preset scales as the reference does (min-max): its MSE is the data's, z-scores too
    assert (workdir / "work" / "nominal" / "data-minmax.npz").is_file()
    for row in models:
        assert float(row["test_mse_minmax_mean"]) == pytest.approx(float(row["test_mse_mean"]),
                                                                  rel=1e-3)
        assert float(row["test_mse_standard_mean"]) > float(row["test_mse_minmax_mean"])
    closed_loop = read_csv(out / "closed_loop.csv")
    assert len(closed_loop) == 4 * 2 * 4  # 4 controllers x noise on/off x 4 starts
    assert len(list((out / "runs" / "nominal" / "closed_loop").iterdir())) == 4 * 2 * 4
    assert {r["start"] for r in closed_loop} == {"[1.5, -70.0]", "[-1.5, 70.0]", "[-1.25, 50.0]",
                                                 "[1.25, -50.0]"}
    assert {(r["seeds"], r["change_0"]) for r in closed_loop} == {("1", "steady state")}
    solve = read_csv(out / "solve_time.csv")
    assert {(r["model"], r["options"]) for r in solve} == {
        (m, o) for m in ("first_principles", "iclrnn", "iclrnn_1x64")
        for o in ("sx", "mx", "sqp")}
    fp_sx = next(r for r in solve if r["model"] == "first_principles" and r["options"] == "sx")
    assert float(fp_sx["ratio_to_first_principles_same_options"]) == 1.0
    for row in solve:  # first-principles MPC runs the closed loops with sx
        assert float(row["ratio_to_first_principles_closed_loop_options"]) == pytest.approx(
            float(row["solve_ms_median"]) / float(fp_sx["solve_ms_median"]))
    table = json.loads((workdir / "results" / "mpc_solve_time.json").read_text())
    assert [(r["model"], r["options"], r["solve_ms_median"]) for r in table] == [
        (r["model"], r["options"], float(r["solve_ms_median"])) for r in solve]
    budget = read_csv(out / "budget.csv")
    assert len(budget) == 2 * 4 * 4  # 2 builds x 4 controllers x 4 starts
    assert {(r["build"], r["model"], r["options"]) for r in budget if r["scenario"] == "0"} == {
        ("ipopt", "first_principles", "sx"), ("sqp", "first_principles", "sqp"),
        *((b, m, o) for b, o in (("ipopt", "mx"), ("sqp", "sqp"))
          for m in ("iclrnn", "rnn", "iclrnn_1x64"))}
    for figure in ("closed_loop.png", "robustness.png"):
        assert (out / figure).stat().st_size > 0
    # a second invocation refits nothing and rebuilds the table from runs/ alone
    again = lipctl(*args, "experiment.stages=[models]", cwd=workdir, check=True)
    assert "9 of 9 runs already done" in again.stdout
    (out / "models.csv").unlink()
    (out / "closed_loop.csv").unlink()
    lipctl("bench", "experiment=cstr_mpc", "out=results/cstr_mpc", "replot=true", cwd=workdir,
           check=True)
    assert read_csv(out / "models.csv") == models
    assert read_csv(out / "closed_loop.csv") == closed_loop
    # the MPC stages alone, without model files, fit only the models they plan on
    alone = lipctl(*tiny_bench("fresh"), "experiment.stages=[solve_time]", cwd=workdir,
                   check=True)
    assert "models: 0 of 3 runs already done" in alone.stdout
    assert sorted(p.name for p in (workdir / "fresh" / "nominal" / "models").iterdir()) == [
        "iclrnn-sigma0.0-seed0.pt", "iclrnn_1x64-sigma0.0-seed0.pt", "rnn-sigma0.0-seed0.pt"]
    assert len(read_csv(out / "models.csv")) == len(models)


def test_bench_models_take_the_experiment_architecture_unless_an_extra_model_names_its_own():
    exp = OmegaConf.create({"extra_models": None, "hidden": 32, "layers": 1})  # the fast preset
    assert process_mpc._architecture(exp, "iclrnn") == ("iclrnn", {"hidden": 32, "layers": 1})
    exp.extra_models = {"wide": {"name": "icrnn", "hidden": 64, "layers": 1}}
    assert process_mpc._architecture(exp, "wide") == ("icrnn", {"hidden": 64, "layers": 1})
    assert process_mpc._architecture(exp, "rnn") == ("rnn", {"hidden": 32, "layers": 1})


@pytest.mark.parametrize("args,expected", [
    (["experiment.stages=[models,dance]"], "experiment.stages: must be a non-empty list"),
    (["experiment.models=[gru]"], "experiment.models: needs known models, got ['gru']"),
    (["experiment.settings.nominal.horizon=0"], "experiment.settings.nominal.horizon: must be"),
    (["+experiment.settings.nominal.kwargs={substeps:0}"], "experiment.settings.nominal: "),
    (["experiment.scenarios.1.start=[1.0]"], "experiment.scenarios.1: in setting nominal: "),
    (["experiment.scenarios.0.start=high"],
     "experiment.scenarios.0: in setting nominal: process 'cstr' has no operating point 'high'"),
    (["~experiment.solve_time_file"], "experiment.solve_time_file: the solve_time stage needs"),
    (["experiment.data.scaler=robust"], "experiment.data.scaler: must be one of"),
    (["experiment.patience=0"], "experiment.patience: must be >= 1"),
    (["experiment.noise=[-0.1]"], "experiment.noise: must be a non-empty list of numbers >= 0"),
    (["experiment.solver.default=nosuch"], "experiment.solver.default: must name"),
    (["experiment.budget_builds.sqp.default=nosuch"],
     "experiment.budget_builds.sqp.default: must name"),
    (["experiment.solver_options.mx.symbolic=XX"],
     "experiment.solver_options.mx: symbolic must be one of"),
    (["experiment.solve_time_models=[iclrnn]"], "experiment.solve_time_models: must include"),
])
def test_bench_cstr_mpc_config_errors_are_one_line(workdir, args, expected):
    assert expected in config_error("bench", "experiment=cstr_mpc", "out=out", *args,
                                    cwd=workdir)
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("args,expected", [
    (["experiment.settings.minimum.kwargs.setting=odd"],
     "experiment.settings.minimum: setting must be one of ('minimum', 'non_minimum')"),
    (["experiment.steps=20"], "experiment.scenarios.0: in setting minimum: schedule step 30 is "
                              "outside [0, 20)"),
    (["experiment.scenarios=[{start:low,schedule:{5:high}}]"],
     "experiment.scenarios.0: in setting minimum: its schedule must set the setpoint of step 0"),
    (["experiment.scenarios=[]"], "experiment.scenarios: needs at least one closed loop"),
])
def test_bench_quadtank_mpc_config_errors_are_one_line(workdir, args, expected):
    assert expected in config_error("bench", "experiment=quadtank_mpc", "out=out", *args,
                                    cwd=workdir)


TINY_QUADTANK = ["experiment.data.states_per_axis=2", "experiment.data.inputs_per_axis=2",
                 "experiment.data.chains=4", "experiment.data.periods=5",
                 "experiment.models=[iclrnn]", "experiment.seeds=[0,1]", "experiment.mpc_seeds=2",
                 "experiment.epochs=2", "experiment.hidden=8", "experiment.steps=6",
                 "experiment.scenarios=[{start:low,schedule:{0:low,3:high}}]",
                 "experiment.settings.minimum.horizon=3",
                 "experiment.settings.non_minimum.horizon=3"]


@pytest.mark.slow
def test_bench_quadtank_mpc_runs_every_setting_through_its_setpoint_changes(workdir):
    """The same benchmark on another plant: two settings, a setpoint schedule, every seed's
    models in closed loop; the tables rebuild from the run files."""
    lipctl("bench", "experiment=quadtank_mpc", "out=res", "work=work", *TINY_QUADTANK,
           cwd=workdir, check=True)
    out = workdir / "res"
    assert sorted(p.relative_to(out / "runs").as_posix()
                  for p in (out / "runs").glob("*/models/*/*.json")) == [
        f"{setting}/models/iclrnn/sigma0.0-seed{seed}.json"
        for setting in ("minimum", "non_minimum") for seed in (0, 1)]
    closed_loop = read_csv(out / "closed_loop.csv")
    assert [(r["setting"], r["controller"], r["measurement_noise"], r["seeds"])
            for r in closed_loop] == [
        (setting, controller, noisy, seeds) for setting in ("minimum", "non_minimum")
        for controller, seeds in (("first_principles", "1"), ("iclrnn", "2"))
        for noisy in ("False", "True")]
    assert {(r["change_0"], r["change_3"]) for r in closed_loop} == {("low", "high")}
    fp = closed_loop[0]  # first-principles MPC settles after the change to "high"
    assert fp["change_3_settled"] == "1" and int(fp["change_3_settle_steps_max"]) <= 3
    record = json.loads((out / "runs" / "non_minimum" / "closed_loop" /
                         "iclrnn-seed1-scenario0-noisy.json").read_text())
    assert len(record["states"]) == 7 and len(record["inputs"]) == 6
    assert record["horizon"] == 3 and record["schedule"] == {"0": "low", "3": "high"}
    assert (out / "closed_loop.png").stat().st_size > 0
    assert not (out / "robustness.png").exists()  # one noise level: no robustness curve
    (out / "closed_loop.csv").unlink()
    lipctl("bench", "experiment=quadtank_mpc", "out=res", "replot=true", cwd=workdir,
           check=True)
    assert read_csv(out / "closed_loop.csv") == closed_loop


@pytest.mark.slow
def test_bench_presets_compose_as_documented(workdir):
    reference = lipctl("bench", "experiment=cstr_mpc_paper", "--cfg", "job", cwd=workdir,
                       check=True).stdout
    for line in ("epochs: 1000", "layers: 2", "hidden: 64", "patience: null", "- 0.9"):
        assert line in reference
    fast = lipctl("bench", "experiment=cstr_mpc_fast", "--cfg", "job", cwd=workdir,
                  check=True).stdout
    for line in ("epochs: 100", "layers: 1", "hidden: 32", "patience: 20",
                 "extra_models: null"):
        assert line in fast
