"""Installing and shipping t2i: install.sh's choice of Python, CI's up-front checks, the wheel's data files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash")
NO_PYTHON = ("install.sh: needs Python >= 3.11 (found: {found}); without root: python3 -m pip install --user uv && "
             "~/.local/bin/uv python install 3.12, then rerun with PYTHON=$(~/.local/bin/uv python find 3.12) "
             "bash envs/install.sh")


def fake_bin(root: Path, scripts: dict[str, str], tools: tuple[str, ...] = ("bash", "dirname")) -> Path:
    """``root/bin`` with ``scripts`` (name -> what it prints) and links to real ``tools``: the whole PATH of a test."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    for name, output in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\necho '{output}'\n")
        (bin_dir / name).chmod(0o755)
    for tool in tools:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return bin_dir


def run_script(script: Path, bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(script)], env={"PATH": str(bin_dir), **env}, capture_output=True, text=True,
                          timeout=60)


def test_install_stops_with_one_line_without_python_311(tmp_path):
    """install.sh, copied without a .venv beside it, on a machine whose only Python is 3.9."""
    for name in ("install.sh", "find_python.sh"):
        (tmp_path / "envs").mkdir(exist_ok=True)
        shutil.copy(ROOT / "envs" / name, tmp_path / "envs" / name)
    result = run_script(tmp_path / "envs" / "install.sh", fake_bin(tmp_path, {"python3": "3.9.18"}))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [NO_PYTHON.format(found="python3 3.9.18")]
    assert not (tmp_path / ".venv").exists()


@pytest.mark.parametrize("scripts, env, chosen", [
    ({"python3": "3.9.18", "python3.12": "3.12.4"}, {}, "python3.12"),
    ({"python3": "3.9.18", "python3.11": "3.10.2", "uv": "{bin}/uv-python"}, {}, "uv-python"),
    ({"python3": "3.12.4", "my-python": "3.13.0"}, {"PYTHON": "my-python"}, "my-python"),
])
def test_find_python_picks_the_first_python_311(tmp_path, scripts, env, chosen):
    bin_dir = tmp_path / "bin"
    fake_bin(tmp_path, {name: out.format(bin=bin_dir) for name, out in scripts.items()} | {"uv-python": "3.11.9"})
    result = run_script(ROOT / "envs" / "find_python.sh", bin_dir, **env)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{bin_dir / chosen}\n", "")


def test_find_python_honours_an_old_python(tmp_path):
    """$PYTHON is the user's choice: too old, it is reported, not replaced by another interpreter."""
    bin_dir = fake_bin(tmp_path, {"python3.12": "3.12.4", "python3": "3.9.18"})
    result = run_script(ROOT / "envs" / "find_python.sh", bin_dir, PYTHON="python3")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [NO_PYTHON.format(found="python3 3.9.18")]


@pytest.mark.parametrize("present, error", [
    ((), "CI: no chromium after envs/install.sh (did apt install it?)"),
    (("chromium",), "CI: no sinfo after .ci/slurm/start.sh"),
    (("chromium", "sinfo"), "CI: pytest collected no tests"),
])
def test_ci_checks_its_tools_up_front(tmp_path, present, error):
    """.ci/run with install.sh, start.sh and pytest stubbed; pytest "collects no tests" (exit 5)."""
    for stub, code in {"envs/install.sh": 0, ".ci/slurm/start.sh": 0, ".venv/bin/python": 5}.items():
        (tmp_path / stub).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / stub).write_text(f"#!/bin/sh\nexit {code}\n")
        (tmp_path / stub).chmod(0o755)
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    result = run_script(tmp_path / ".ci" / "run", fake_bin(tmp_path, dict.fromkeys(present, "")))
    assert result.returncode == 1 and result.stderr.splitlines() == [error]


LOAD_CONFIG = """
import json, sys
from pathlib import Path
import t2i
from t2i.config import ConfigError, load_config
assert Path(t2i.__file__).is_relative_to(sys.argv[1]), t2i.__file__
try:
    print(json.dumps(load_config(sys.argv[2]), default=str, sort_keys=True))
except ConfigError as e:
    print("ConfigError:", e)
"""


def test_wheel_ships_the_schemas_and_templates(tmp_path):
    """A wheel of the repo (built from a copy: setuptools writes build/ and *.egg-info into the tree it builds)
    holds every schema and template, and its t2i validates config.yaml as the source tree does."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "t2i", src / "t2i", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("t2i-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
        shipped = set(z.namelist())
    data = [p.relative_to(ROOT).as_posix() for pattern in ("t2i/schemas/**/*.yaml", "t2i/report/templates/**/*")
            for p in ROOT.glob(pattern) if p.is_file()]
    assert "t2i/schemas/systems/jit.schema.yaml" in data and "t2i/report/templates/report.html.j2" in data
    assert sorted(set(data) - shipped) == []

    def load(t2i_root: Path) -> str:
        result = subprocess.run([sys.executable, "-c", LOAD_CONFIG, str(t2i_root), str(ROOT / "config.yaml")],
                                cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(t2i_root)},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    # the same outcome, a validated config or the same ConfigError (config.yaml and the schema may be mid-change)
    assert load(site) == load(ROOT)
