"""Plant logs checked on the way in: declared units converted to the process's, a column that
does not fit the process refused with the unit that would fit, exact duplicate rows dropped, and
Inf and text cells counted apart from empty ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lipctl.control.log_import import LogError, LogPolicy, import_log
from lipctl.control.process_data import load_dataset
from lipctl.control.units import UnitError, convert
from lipctl.envs.cstr import CSTR
from tests.control import test_log_import
from tests.control.test_log_import import COLUMNS, TAGS, write_log
from tests.helpers import assert_user_error, config_error

lipctl_data = test_log_import.lipctl_data  # the fixture running `lipctl data` in this process
LEVELS = [TAGS[name] for name in ("h1", "h2", "h3", "h4")]
MM = COLUMNS[:-1] + ",units:{h1:mm,h2:mm,h3:mm,h4:mm}}"


def assert_same_data(path_a, path_b) -> None:
    """Two dataset files with the same samples and split (up to float rounding)."""
    a, b = load_dataset(path_a), load_dataset(path_b)
    assert len(a.x0) > 50 and list(a.split) == list(b.split)
    for key in ("x0", "u", "targets"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=1e-12, atol=1e-12)


def test_units_convert_by_the_table():
    np.testing.assert_allclose(convert([123.0], "mm", "cm"), [12.3])
    np.testing.assert_allclose(convert([25.0, -40.0], "degC", "K"), [298.15, 233.15])
    np.testing.assert_allclose(convert([-40.0], "degF", "degC"), [-40.0])
    np.testing.assert_allclose(convert([5.0], "delta_degC", "K"), [5.0])  # a difference
    np.testing.assert_allclose(convert([3600.0], "kJ/h", "kW"), [1.0])
    np.testing.assert_allclose(convert([60.0], "L/min", "m3/h"), [3.6])
    np.testing.assert_allclose(convert([2.0], "mol/L", "kmol/m3"), [2.0])
    np.testing.assert_allclose(convert([90.0], "min", "h"), [1.5])
    with pytest.raises(UnitError, match="'V' is a voltage unit, not a length unit like 'cm'"):
        convert([1.0], "V", "cm")
    with pytest.raises(UnitError, match="unknown unit 'inch'; length units: mm, cm, m"):
        convert([1.0], "inch", "cm")


@pytest.mark.slow
def test_a_log_in_mm_with_units_declared_imports_like_the_same_log_in_cm(
        tmp_path, lipctl_data):
    frame = write_log(tmp_path / "cm.csv", 120, seed=7, noise=0.02)
    frame.assign(**{tag: frame[tag] * 10 for tag in LEVELS}).to_csv(tmp_path / "mm.csv",
                                                                     index=False)
    # the same log again with its time in minutes, declared too
    frame.assign(**{tag: frame[tag] * 10 for tag in LEVELS}, stamp=frame["stamp"] / 60).to_csv(
        tmp_path / "mm_min.csv", index=False)
    lipctl_data("env=quadtank", "import=cm.csv", COLUMNS, "out=cm.npz", check=True)
    result = lipctl_data("env=quadtank", "import=mm.csv", MM, "out=mm.npz", check=True)
    assert "units converted: LT101 mm -> cm, LT102 mm -> cm, LT103 mm -> cm, LT104 mm -> cm" \
        in result.stdout
    assert_same_data(tmp_path / "cm.npz", tmp_path / "mm.npz")
    lipctl_data("env=quadtank", "import=mm_min.csv", MM[:-2] + ",time:min}}", "out=min.npz",
                check=True)
    assert_same_data(tmp_path / "cm.npz", tmp_path / "min.npz")


@pytest.mark.slow
def test_a_log_in_mm_without_units_is_refused_naming_the_column_and_mm(tmp_path, lipctl_data):
    frame = write_log(tmp_path / "cm.csv", 60, seed=8, noise=0.0)
    frame.assign(LT101=frame["LT101"] * 10).to_csv(tmp_path / "mm.csv", index=False)
    refused = lipctl_data("env=quadtank", "import=mm.csv", COLUMNS, "out=mm.npz")
    assert_user_error(refused, "import: mm.csv: column 'LT101' (h1) has 100% of its values "
                               "outside [0, 24] cm (h1's box [4, 20] widened by 25% each side)")
    assert "values look like mm: declare units: {h1: mm} in log.columns" in refused.stderr
    assert not (tmp_path / "mm.npz").exists()
    # opted out: imported, with the same message as a warning in the report
    warned = lipctl_data("env=quadtank", "import=mm.csv", COLUMNS, "out=mm.npz",
                         "log.range_check=warn", check=True)
    warnings = [line for line in warned.stdout.splitlines() if line.startswith("WARNING: ")]
    assert len(warnings) == 1 and "column 'LT101' (h1)" in warnings[0], warned.stdout
    assert "declare units: {h1: mm}" in warnings[0]
    assert load_dataset(tmp_path / "mm.npz").x0[:, 0].min() > 40  # nothing converted
    # a unit declared wrong is caught the same way: the plant's cm read as m
    wrong = lipctl_data("env=quadtank", "import=cm.csv", COLUMNS[:-1] + ",units:{h2:m}}",
                        "out=m.npz")
    assert_user_error(wrong, "column 'LT102' (h2, read in m) has 100% of its values outside")
    assert "values look like cm or mm: declare units: {h2: cm}" in wrong.stderr


def test_a_deviation_temperature_declared_in_degC_is_told_it_is_a_difference(tmp_path):
    rng = np.random.default_rng(0)
    x, rows = np.array([0.2, -8.0]), []
    for k in range(200):
        u = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-5e4, 5e4)])
        rows.append([k * 0.005 * 3600, *x, *u])
        x = CSTR.step(x, u)
    pd.DataFrame(rows, columns=["time", "CA", "T", "CA0", "Q"]).to_csv(tmp_path / "cstr.csv",
                                                                       index=False)
    with pytest.raises(LogError, match=r"column 'T' \(T, read in degC\) .* values look like K "
                                       r"or delta_degC or delta_degF: declare units: \{T: K\}"):
        import_log(CSTR, tmp_path / "cstr.csv", {"units": {"T": "degC"}})
    data, report = import_log(CSTR, tmp_path / "cstr.csv", {"units": {"T": "delta_degC"}})
    assert report.conversions == ("T delta_degC -> K",)
    np.testing.assert_allclose(data.x0[0], [0.2, -8.0])
    _, warned = import_log(CSTR, tmp_path / "cstr.csv", {"units": {"T": "degC"}},
                           LogPolicy(range_check="warn"))
    assert len(warned.warnings) == 1 and "column 'T'" in warned.warnings[0]


@pytest.mark.slow
def test_exact_duplicate_rows_are_dropped_and_counted(tmp_path, lipctl_data):
    frame = write_log(tmp_path / "log.csv", 60, seed=9, noise=0.0)
    lipctl_data("env=quadtank", "import=log.csv", COLUMNS, "out=log.npz", check=True)
    doubled = pd.concat([frame, frame.iloc[[10, 11, 40]], frame.iloc[[40]]]).sort_index(
        kind="stable")
    doubled.to_csv(tmp_path / "doubled.csv", index=False)
    result = lipctl_data("env=quadtank", "import=doubled.csv", COLUMNS, "out=doubled.npz",
                         check=True)
    assert f"{len(frame) + 4} rows over" in result.stdout
    assert "4 exact duplicate rows dropped" in result.stdout
    assert_same_data(tmp_path / "log.npz", tmp_path / "doubled.npz")
    # a repeated time with other values stays an error naming its line
    clash = pd.concat([frame, frame.iloc[[10]].assign(LT101=5.0)]).sort_index(kind="stable")
    clash.to_csv(tmp_path / "clash.csv", index=False)
    refused = lipctl_data("env=quadtank", "import=clash.csv", COLUMNS, "out=clash.npz")
    assert_user_error(refused, f"clash.csv line 13: time {frame['stamp'][10]} repeats line "
                               "12's with other values (only exact duplicate rows are dropped)")


@pytest.mark.slow
def test_inf_and_text_cells_are_counted_apart_and_read_as_gaps(tmp_path, lipctl_data):
    frame = write_log(tmp_path / "log.csv", 60, seed=10, noise=0.0)
    bad = frame.astype({"LT102": object})
    bad.loc[[5, 9], "LT101"] = [np.inf, -np.inf]
    bad.loc[[7, 8, 30], "LT102"] = ["Bad", "I/O Timeout", "Bad"]
    bad.loc[20, "P1_V"] = np.nan
    bad.to_csv(tmp_path / "bad.csv", index=False)
    gaps = frame.copy()
    gaps.loc[[5, 9], "LT101"] = np.nan
    gaps.loc[[7, 8, 30], "LT102"] = np.nan
    gaps.loc[20, "P1_V"] = np.nan
    gaps.to_csv(tmp_path / "gaps.csv", index=False)
    result = lipctl_data("env=quadtank", "import=bad.csv", COLUMNS, "out=bad.npz", check=True)
    lines = result.stdout.splitlines()
    assert "1 NaN cells, 2 Inf cells, 3 text cells" in lines[0], lines[0]
    assert "Inf cells (read as gaps): LT101 2" in lines
    assert "text cells (read as gaps): LT102 3 (first 'Bad' at line 9)" in lines
    expected = lipctl_data("env=quadtank", "import=gaps.csv", COLUMNS, "out=gaps.npz",
                           check=True)
    assert "6 NaN cells, 0 Inf cells, 0 text cells" in expected.stdout
    assert_same_data(tmp_path / "gaps.npz", tmp_path / "bad.npz")


UNIT_ERRORS = [
    ("h3:inch", "log.columns: units: h3 (column 'LT103'): unknown unit 'inch'; length units: mm, "
                "cm, m"),
    ("v1:cm", "units: v1 (column 'P1_V'): 'cm' is a length unit, not a voltage unit like 'V'; "
              "use one of mV, V"),
    ("h9:cm", "units: process 'quadtank' has no variable 'h9'"),
    ("h1:furlong", "log.columns: units: h1 (column 'LT101'): unknown unit 'furlong'"),
]


@pytest.mark.parametrize(("unit", "expected"), UNIT_ERRORS, ids=[u for u, _ in UNIT_ERRORS])
def test_an_unknown_or_incompatible_unit_is_one_line(tmp_path, unit, expected):
    write_log(tmp_path / "log.csv", 30, seed=11, noise=0.0)
    assert expected in config_error("data", "env=quadtank", "import=log.csv", "out=cli.npz",
                                    COLUMNS[:-1] + f",units:{{{unit}}}}}", cwd=tmp_path)
    assert not (tmp_path / "cli.npz").exists()
