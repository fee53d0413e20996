"""Files lipctl writes and reads, under real failures: a write that the operating system refuses
(a file-size limit gives EFBIG, as a full disk gives ENOSPC) is one line naming the path and
keeps the earlier file; temp files of interrupted writes go; damaged or foreign files are one
clear line, never a traceback, a KeyError or numpy's advice to load them unsafely."""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from lipctl.agents.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from lipctl.agents.saved import load_agent
from lipctl.config import user_errors
from lipctl.control import run
from lipctl.control.models import build_model, load_model, save_model
from lipctl.control.process_data import generate, load_dataset, save_dataset
from lipctl.envs import make_env
from lipctl.envs.cstr import CSTR
from lipctl.envs.demos import DemosError, from_episodes, load_demos, save_demos
from lipctl.envs.experts import make_expert
from lipctl.envs.files import WriteError, atomic_write, read_csv, write_csv, write_json
from lipctl.logger import CsvWriter
from tests.agents.test_checkpoint import COMPLETE
from tests.helpers import TINY_TRAIN, assert_user_error, config_error, lipctl

FILE_TOO_LARGE = os.strerror(errno.EFBIG)


@contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """No file of this process may grow past `size` bytes (writes fail with EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def limited_lipctl(size: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m lipctl ARGS` in `cwd`, no file of it larger than `size` bytes."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))

    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "lipctl", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=limit)


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.fixture(scope="module")
def data():
    return generate(CSTR, states_per_axis=3, inputs_per_axis=2, chains=2, periods=3, seed=0)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, data) -> Path:
    """A saved ICLRNN large enough that torch reads its cut-off archive in several ways."""
    path = tmp_path_factory.mktemp("model") / "iclrnn.pt"
    save_model(path, build_model("iclrnn", 2, 2, hidden=64), data)
    return path


# ---------------------------------------------------------------- writes the system refuses


@pytest.mark.parametrize("writer", ["checkpoint", "dataset", "model", "text", "json", "csv"])
def test_a_refused_write_names_the_path_and_keeps_the_earlier_file(tmp_path, data, writer):
    small, large = {**COMPLETE, "step": 1}, {**COMPLETE, "step": 2, "w": torch.zeros(50_000)}
    big_data = generate(CSTR, states_per_axis=6, inputs_per_axis=4, chains=8, periods=20, seed=1)
    write, read = {
        "checkpoint": (lambda p, big: save_checkpoint(p, large if big else small),
                       lambda p: load_checkpoint(p)["step"]),
        "dataset": (lambda p, big: save_dataset(big_data if big else data, p),
                    lambda p: len(load_dataset(p).x0)),
        "model": (lambda p, big: save_model(p, build_model("rnn", 2, 2, hidden=64 if big else 4),
                                            data),
                  lambda p: load_model(p).model.hparams["hidden"]),
        "text": (lambda p, big: atomic_write(p, lambda f: f.write(b"x" * (10**6 if big else 10))),
                 lambda p: p.stat().st_size),
        "json": (lambda p, big: write_json(p, {"rows": list(range(10**5 if big else 3))}),
                 lambda p: len(json.loads(p.read_text())["rows"])),
        "csv": (lambda p, big: write_csv(p, [{"step": i} for i in range(10**5 if big else 3)]),
                lambda p: len(read_csv(p))),
    }[writer]
    path = tmp_path / "out" / "file"
    write(path, False)
    before = read(path)
    with file_size_limit(path.stat().st_size + 1000), pytest.raises(WriteError) as refused:
        write(path, True)
    assert str(refused.value) == f"cannot write {path}: {FILE_TOO_LARGE}"
    assert refused.value.errno == errno.EFBIG and refused.value.filename == str(path)
    assert read(path) == before
    assert siblings(path) == ["file"]  # no temp file left behind


def test_a_refused_csv_log_write_names_the_file_and_keeps_its_rows(tmp_path):
    writer = CsvWriter(tmp_path)
    writer.write("train", 1, {"loss": 0.5})
    path = tmp_path / "train.csv"
    before = path.read_text()
    with file_size_limit(path.stat().st_size + 10):
        with pytest.raises(WriteError) as appended:
            writer.write("train", 2, {"loss": 0.25 + 1e-9})  # an append past the limit
        with pytest.raises(WriteError) as rewritten:
            writer.write("train", 2, {"loss": 0.25, "a_new_column": 1.0})  # a rewrite
    for refused in (appended, rewritten):
        assert str(refused.value) == f"cannot write {path}: {FILE_TOO_LARGE}"
    assert path.read_text().startswith(before)
    assert siblings(path) == ["train.csv"]  # no temp file left behind


def test_user_errors_turns_os_errors_into_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_, user_errors("lipctl x"):
        (tmp_path / "missing" / "train.csv").open("a")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == \
        f"lipctl x: error: {tmp_path / 'missing' / 'train.csv'}: No such file or directory\n"
    with pytest.raises(SystemExit) as exit_, user_errors("lipctl x"):
        with file_size_limit(100), open(tmp_path / "log.csv", "w") as f:
            f.write("x" * 1000)  # fails when flushed, with no file name in the error
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"lipctl x: error: a file could not be written: " \
                                      f"{FILE_TOO_LARGE}\n"
    with pytest.raises(ConnectionRefusedError), user_errors("lipctl x"):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")  # not a file's: raised on


def test_a_log_file_on_a_full_disk_prints_no_traceback_of_its_own(tmp_path, capsys):
    log = logging.getLogger("lipctl.test_file_errors")
    handler = logging.FileHandler(tmp_path / "job.log")
    log.addHandler(handler)
    try:
        with user_errors("lipctl x"), file_size_limit(100):
            log.warning("x" * 1000)  # the handler's flush fails with EFBIG
        assert capsys.readouterr().err == ""
        assert logging.raiseExceptions  # as it was outside
        with file_size_limit(100):
            log.warning("x" * 1000)
        assert "--- Logging error ---" in capsys.readouterr().err  # what it spares the user
    finally:
        log.removeHandler(handler)
        handler.close()


@pytest.mark.slow
def test_a_refused_dataset_write_is_one_line_and_keeps_the_earlier_file(workdir):
    small = ["states_per_axis=3", "inputs_per_axis=2", "chains=2", "periods=3"]
    lipctl("data", "out=d.npz", *small, cwd=workdir, check=True)
    before = (workdir / "d.npz").read_bytes()
    result = limited_lipctl(len(before), "data", "out=d.npz", "chains=16", "periods=20",
                            cwd=workdir)
    assert_user_error(result, f"lipctl data: error: cannot write d.npz: {FILE_TOO_LARGE}")
    assert (workdir / "d.npz").read_bytes() == before
    assert siblings(workdir / "d.npz") == ["d.npz"]


@pytest.mark.slow
def test_a_refused_checkpoint_write_stops_training_in_one_line(workdir):
    run_dir = workdir / "run"
    result = limited_lipctl(50_000, "train", f"hydra.run.dir={run_dir}", *TINY_TRAIN,
                            cwd=workdir)  # the logs fit, the first checkpoint (~100 kB) not
    assert_user_error(result, f"lipctl train: error: cannot write {run_dir / 'checkpoint.pt'}: "
                              f"{FILE_TOO_LARGE}")
    assert not [p.name for p in run_dir.iterdir() if "checkpoint" in p.name]
    assert (run_dir / "train.csv").is_file()  # the rows logged before it are kept


# ------------------------------------------------------------ temp files of interrupted writes


def test_temp_files_of_interrupted_writes_go_when_the_file_is_next_written(tmp_path):
    path = tmp_path / "checkpoint.pt"
    stale = [tmp_path / ".checkpoint.pt.k2j_9xqa", tmp_path / ".checkpoint.pt.0abcdefg"]
    kept = [tmp_path / ".checkpoint.pt.json", tmp_path / ".other.pt.k2j_9xqa",
            tmp_path / "checkpoint.pt.k2j_9xqa"]  # not temp files of this target
    for file in stale + kept:
        file.write_bytes(os.urandom(1000))
    save_checkpoint(path, {**COMPLETE, "step": 3})
    assert load_checkpoint(path)["step"] == 3
    assert siblings(path) == sorted(["checkpoint.pt", *(p.name for p in kept)])


def test_json_that_is_not_a_number_is_refused_before_the_file_is_touched(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"eval_return": 1.5})
    with pytest.raises(ValueError, match="JSON compliant"):
        write_json(path, {"eval_return": float("nan")}, allow_nan=False)
    assert json.loads(path.read_text()) == {"eval_return": 1.5}
    assert siblings(path) == ["summary.json"]


def test_a_write_into_a_glob_like_name_removes_only_its_own_temp_files(tmp_path):
    path = tmp_path / "run[1]*.json"
    (tmp_path / ".run[1]*.json.abcdefgh").write_text("stale")
    (tmp_path / ".run1x.json.abcdefgh").write_text("another file's")
    atomic_write(path, lambda f: f.write(b"{}"))
    assert path.read_text() == "{}"
    assert siblings(path) == [".run1x.json.abcdefgh", "run[1]*.json"]


# ------------------------------------------------------------ damaged and foreign files


def test_a_checkpoint_without_contents_names_what_is_missing(tmp_path):
    path = tmp_path / "empty.pt"
    torch.save({"format": 2}, path)
    with pytest.raises(CheckpointError, match=rf"{path} is an incomplete checkpoint: no config, "
                                              "certificates, agent, step, episodes, buffer"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="incomplete checkpoint: no config"):
        load_agent(path)
    torch.save({"format": 2, "config": {}, "certificates": {}, "policy": {}}, path)
    assert load_checkpoint(path)["policy"] == {}  # behaviour cloning's: no loop state
    torch.save({**COMPLETE, "format": 2, "config": [1, 2]}, path)
    with pytest.raises(CheckpointError, match="its config is not a mapping"):
        load_checkpoint(path)


@pytest.mark.parametrize("command", ["eval", *(pytest.param(c, marks=pytest.mark.slow)
                                               for c in ("plan", "export", "robustness"))])
def test_commands_refuse_a_checkpoint_without_contents_in_one_line(workdir, command):
    torch.save({"format": 2}, workdir / "empty.pt")
    result = lipctl(command, "checkpoint=empty.pt", cwd=workdir)
    assert_user_error(result, "empty.pt")
    assert "KeyError" not in result.stderr


def test_random_bytes_as_demonstrations_are_not_a_demonstrations_file(tmp_path):
    path = tmp_path / "random.npz"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DemosError) as refused:
        load_demos(path)
    assert str(refused.value) == (f"cannot read demonstrations {path}: not a lipctl "
                                  "demonstrations file (.npz written by lipctl demos)")


def test_a_truncated_or_pickled_demonstrations_file_is_one_clear_error(tmp_path):
    env = make_env("InvertedPendulum-v5")
    demos = from_episodes(run(make_expert("lqr", env), env, episodes=1, seed=0), env, "lqr")
    env.close()
    whole = tmp_path / "demos.npz"
    save_demos(whole, demos)
    raw = whole.read_bytes()
    cut = tmp_path / "cut.npz"
    for end in (10, len(raw) // 2, len(raw) - 10):
        cut.write_bytes(raw[:end])
        with pytest.raises(DemosError, match=f"cannot read demonstrations {cut}: corrupt or "
                                             "truncated file$"):
            load_demos(cut)
    np.savez(cut, observations=np.array([{"code": 1}], dtype=object))
    with pytest.raises(DemosError, match=r"is not a lipctl demonstrations file .*\(refused: it "
                                         r"is not plain data\)") as refused:
        load_demos(cut)
    assert "allow_pickle" not in str(refused.value)


def test_demos_given_random_bytes_is_one_line(workdir):
    (workdir / "random.npz").write_bytes(np.random.default_rng(0).bytes(5000))
    assert "random.npz: not a lipctl demonstrations file" in config_error(
        "train", "agent=bc", "env=inverted_pendulum", "demos=random.npz", cwd=workdir)


def test_a_plant_log_given_as_a_dataset_points_to_the_log_import(tmp_path, data):
    log = tmp_path / "log.csv"
    log.write_text("time,CA,T,F,Q\n0,0.5,350,5,0\n60,0.51,351,5,0\n")
    with pytest.raises(ValueError) as refused:
        load_dataset(log)
    assert str(refused.value) == (
        f"cannot read dataset {log}: not a process dataset record (.npz written by lipctl "
        "data; a plant log is imported with lipctl data env=NAME import=LOG.csv)")
    whole = tmp_path / "data.npz"
    save_dataset(data, whole)
    (tmp_path / "cut.npz").write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(ValueError, match="cut.npz: corrupt or truncated file$"):
        load_dataset(tmp_path / "cut.npz")


@pytest.mark.slow
def test_fit_given_a_plant_log_is_one_line(workdir):
    (workdir / "log.csv").write_text("time,CA,T,F,Q\n0,0.5,350,5,0\n60,0.51,351,5,0\n")
    result = lipctl("fit", "model=iclrnn", "data=log.csv", "out=m.pt", cwd=workdir)
    assert_user_error(result, "lipctl fit: error: data: cannot read dataset log.csv: not a "
                              "process dataset record")
    assert "import=LOG.csv" in result.stderr and "allow_pickle" not in result.stderr


def test_every_cut_of_a_model_file_is_corrupt_or_truncated(tmp_path, model_file):
    raw = model_file.read_bytes()
    cut = tmp_path / "cut.pt"
    for end in range(4, len(raw), 101):  # torch fails some cuts with OSError(EINVAL)
        cut.write_bytes(raw[:end])
        with pytest.raises(ValueError) as refused:
            load_model(cut)
        assert str(refused.value) == f"cannot read model file {cut}: corrupt or truncated file"
    cut.write_bytes(b"")
    with pytest.raises(ValueError, match=f"cannot read model file {cut}: empty file"):
        load_model(cut)


@pytest.mark.slow
def test_mpc_given_a_truncated_model_file_is_one_line(workdir, model_file):
    raw = model_file.read_bytes()
    (workdir / "cut.pt").write_bytes(raw[:len(raw) // 2])
    result = lipctl("mpc", "model=iclrnn", "model_file=cut.pt", cwd=workdir)
    assert_user_error(result, "lipctl mpc: error: model_file: cannot read model file cut.pt: "
                              "corrupt or truncated file")
