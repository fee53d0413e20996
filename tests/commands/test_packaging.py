"""lipctl as an installed distribution: one import name, the import arrows of DESIGN.md, a CLI
that starts without the heavy stack, optional extras, and python-control beside it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

from lipctl.cli import COMMAND_EXTRAS, COMMANDS
from lipctl.extras import EXTRAS, LAUNCHER_EXTRAS, MissingExtra, require_extra

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS = PYPROJECT["tool"]["setuptools"]["package-dir"]  # lipctl.<name> -> folder
# What each layer may import of lipctl (besides itself): arrows point one way.
ALLOWED = {
    "lipctl.lipschitz": set(),
    "lipctl.envs": {"lipctl.lipschitz"},
    "lipctl.control": {"lipctl.envs", "lipctl.lipschitz"},
    "lipctl.agents": {"lipctl.control", "lipctl.envs", "lipctl.lipschitz"},
}


def _modules() -> dict[str, Path]:
    """Every module of the distribution by its import name."""
    roots = {"lipctl": ROOT / "lipctl"} | {name: ROOT / folder
                                             for name, folder in PACKAGE_DIRS.items()}
    modules = {}
    for name, folder in roots.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            modules[".".join((name, *parts)).removesuffix(".__init__")] = path
    return modules


def _imports(name: str, path: Path) -> set[str]:
    """The absolute names a module imports (relative imports resolved), anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
    return found


def _layer(module: str) -> str:
    """The layer a lipctl module belongs to: a package of ALLOWED, or the app (CLI, commands)."""
    return next((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")),
                "lipctl")


def test_every_package_folder_is_installed_under_lipctl():
    declared = set(PYPROJECT["tool"]["setuptools"]["packages"])
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    assert packages == declared
    assert set(PACKAGE_DIRS) == set(ALLOWED) | {"lipctl.conf"}


@pytest.mark.slow
def test_imports_follow_the_arrows_and_nothing_imports_scripts():
    violations = []
    for module, path in _modules().items():
        layer = _layer(module)
        for imported in _imports(module, path):
            top = imported.split(".")[0]
            if top in {"scripts", "agents", "envs", "control", "lipschitz", "conf"}:
                violations.append(f"{module} imports {imported} (not under lipctl)")
            elif top == "lipctl" and layer != "lipctl":
                target = _layer(imported)
                if target != layer and target not in ALLOWED[layer]:
                    violations.append(f"{module} ({layer}) imports {imported} ({target})")
    assert not violations, "\n".join(violations)


def test_the_arrow_check_sees_a_violation(tmp_path):
    """The checker itself: a control module importing agents is caught."""
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from lipctl.agents.sac import SAC\n")
    assert "lipctl.agents.sac" in _imports("lipctl.control.bad", path)
    assert _layer("lipctl.agents.sac") not in ALLOWED[_layer("lipctl.control.bad")]


# Inside the top layer: commands are imported by the CLI (by name), the bench command and the
# benchmarks that drive them, and by no library builder.
MAY_IMPORT_COMMANDS = ("lipctl.commands", "lipctl.bench")


def _top_layer_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the top-layer modules it imports (`from package import module` included)."""
    top = {name: path for name, path in modules.items() if _layer(name) == "lipctl"}
    graph = {}
    for name, path in top.items():
        found = _imports(name, path)
        found |= {f"{node.module}.{alias.name}" for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.ImportFrom) and node.module and not node.level
                  for alias in node.names}
        graph[name] = {imported for imported in found if imported in top} - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle a depth-first walk meets, as the modules along it."""
    state: dict[str, str] = {}
    path: list[str] = []
    found = []

    def walk(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                found.append(path[path.index(imported):] + [imported])
            elif imported not in state:
                walk(imported)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module)
    return found


def test_the_top_layer_has_no_circle_and_only_commands_import_commands():
    graph = _top_layer_graph(_modules())
    assert not _cycles(graph), "\n".join(" -> ".join(c) for c in _cycles(graph))
    reaching = [f"{module} imports {imported}" for module, imports in graph.items()
                for imported in imports if imported.startswith("lipctl.commands")
                and not module.startswith(MAY_IMPORT_COMMANDS)]
    assert not reaching, "\n".join(reaching)


def test_the_top_layer_check_sees_a_circle_and_a_builder_importing_a_command(tmp_path):
    """The checker itself, on a copy of the top layer with the two defects put back."""
    modules = _modules()
    circle, builder = tmp_path / "config.py", tmp_path / "deployables.py"
    circle.write_text(modules["lipctl.config"].read_text() + "\nfrom lipctl.cli import main\n")
    builder.write_text("from lipctl.commands.plant_serve import validate\n")
    graph = _top_layer_graph(modules | {"lipctl.config": circle, "lipctl.deployables": builder})
    assert any({"lipctl.config", "lipctl.cli"} <= set(cycle) for cycle in _cycles(graph))
    assert "lipctl.commands.plant_serve" in graph["lipctl.deployables"]


def _python(code: str, cwd: Path, python: str = sys.executable) -> str:
    result = subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_help_imports_neither_torch_nor_mujoco_nor_casadi(tmp_path):
    code = ("import sys, contextlib, io\nfrom lipctl.cli import main\n"
            "for args in (['--help'], ['train', '--help'], ['deploy', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), "
            "contextlib.suppress(SystemExit):\n        main(args)\n"
            "print(sorted(m for m in ('torch', 'mujoco', 'casadi', 'gymnasium') "
            "if m in sys.modules))")
    assert _python(code, tmp_path).strip() == "[]"


@pytest.mark.slow
def test_lipctl_and_python_control_import_side_by_side(tmp_path):
    """python-control's `control` and `lipctl.control` in one interpreter, and the pendulum
    expert's LQR gain checked against control.dlqr on the same linearisation."""
    code = """
import json
import control, gymnasium as gym, numpy as np
import lipctl.control
from lipctl.envs.experts import linearise_mujoco, make_expert
env = gym.make("InvertedPendulum-v5")
expert = make_expert("lqr", env)
a, b = linearise_mujoco(env)
gain, _, _ = control.dlqr(a, b, np.diag([1.0, 10.0, 0.1, 0.1]), 0.1 * np.eye(1))
print(json.dumps({"control": control.__file__, "lipctl": lipctl.control.__file__,
                  "ours": expert.gain.tolist(), "dlqr": np.asarray(gain).tolist()}))
"""
    result = json.loads(_python(code, tmp_path))
    assert "site-packages" in result["control"] and Path(result["control"]).parent.name == "control"
    assert result["lipctl"] != result["control"]
    np.testing.assert_allclose(result["ours"], result["dlqr"], rtol=1e-6)


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(EXTRAS, "deploy", ("asyncua", "no_such_module_here"))
    with pytest.raises(MissingExtra, match=r"^lipctl deploy needs lipctl\[deploy\] "
                                           r"\(no_such_module_here not installed\): "
                                           r"pip install 'lipctl\[deploy\]'$"):
        require_extra("deploy", "lipctl deploy")
    require_extra("export", "lipctl export")  # installed here: no error


def test_extras_match_pyproject():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(extras) and "all" in extras
    assert set(COMMAND_EXTRAS) <= set(COMMANDS)
    assert set(COMMAND_EXTRAS.values()) | set(LAUNCHER_EXTRAS.values()) <= set(EXTRAS)
    assert all(extra in extras["all"][0] for extra in EXTRAS)
