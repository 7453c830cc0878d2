"""Packaging: the documented development install is type-checkable, and the wheel is whole.

Both tests build from a copy of this checkout's package and packaging files in a temporary
directory (so the checkout's own ``build/`` and ``*.egg-info`` are never rewritten under a
running suite), offline: ``--no-build-isolation`` uses the setuptools that the ``test``
extra installs, and ``--no-deps`` installs nothing else.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGING_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "README.md", "LICENSE")
PIP_TIMEOUT = 240


def _require_build_backend() -> None:
    """Skip when this environment's setuptools cannot build the project (the test extra has it)."""
    setuptools = pytest.importorskip("setuptools")
    major = int(setuptools.__version__.split(".")[0])
    if major < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77: install the test extra")


def _copy_project(dest: Path) -> Path:
    """A copy of the package and the packaging files, without caches or build output."""
    dest.mkdir()
    for name in PACKAGING_FILES:
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(
        ROOT / "nolag", dest / "nolag", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return dest


def _run(args: list[str], env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None) -> str:
    """Run a command to completion; its stdout and stderr. A non-zero exit fails the test."""
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=PIP_TIMEOUT, env=env, cwd=cwd, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{args[:6]} exited {proc.returncode}:\n{out}"
    return out


def documented_editable_flags() -> list[str]:
    """The options the README's test command gives `pip install -e ".[broker,test]"`."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r'pip install -e "\.\[broker,test\]"([^&\n]*)&& python -m pytest', readme)
    assert match, 'README.md: no `pip install -e ".[broker,test]" ... && python -m pytest` line'
    return match.group(1).split()


def test_the_readme_install_is_strict_editable() -> None:
    # setuptools' default editable mode installs an import hook that type checkers cannot
    # follow (mypy reports "Cannot find implementation or library stub for module named
    # 'nolag'"); the strict mode installs a tree of links that they can
    assert documented_editable_flags() == ["--config-settings", "editable_mode=strict"]


@pytest.mark.timeout(300)
def test_mypy_finds_nolag_after_the_documented_editable_install(tmp_path: Path) -> None:
    _require_build_backend()
    project = _copy_project(tmp_path / "checkout")
    # a name only the copy has: mypy must resolve `nolag` to this editable install, not to
    # any other nolag on the machine
    with (project / "nolag" / "_version.py").open("a", encoding="utf-8") as f:
        f.write('\nEDITABLE_PROBE: tuple[int, str] = (1, "copy")\n')
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    # pip and setuptools come from this environment (PYTHONPATH); the install goes into venv
    env = {
        "PYTHONPATH": os.pathsep.join(site.getsitepackages()),
        "PATH": os.environ.get("PATH", ""),
    }
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    install = ["install", "--no-deps", "--no-build-isolation", "-e", str(project)]
    _run([*pip, *install, *documented_editable_flags()], env=env)
    script = tmp_path / "user_script.py"
    script.write_text(
        "import nolag\nimport nolag._version\n"
        "reveal_type(nolag._version.EDITABLE_PROBE)\nreveal_type(nolag.__version__)\n"
    )
    mypy = [sys.executable, "-m", "mypy", "--python-executable", str(python)]
    options = ["--cache-dir", str(tmp_path / "mypy-cache"), "--no-error-summary"]
    out = _run([*mypy, *options, str(script)], cwd=tmp_path)
    assert "Cannot find implementation or library stub" not in out, out
    # mypy 1 qualifies builtins ("builtins.int"), mypy 2 does not
    revealed = [re.sub(r"\bbuiltins\.", "", r) for r in re.findall(r'Revealed type is "(.*)"', out)]
    assert revealed == ["tuple[int, str]", "str"], out


@pytest.mark.timeout(300)
def test_the_wheel_holds_every_subpackage_the_marker_and_the_license(tmp_path: Path) -> None:
    _require_build_backend()
    project = _copy_project(tmp_path / "checkout")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    dist = tmp_path / "dist"
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(project)])
    [wheel] = dist.glob("nolag_sync-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = zf.read(metadata).decode()
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entries = zf.read(entry_points).decode()
    packages = {
        p.parent.relative_to(ROOT).as_posix() + "/__init__.py"
        for p in (ROOT / "nolag").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert packages <= names, sorted(packages - names)
    assert "nolag/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)
    assert "License-Expression: MIT" in meta
    assert "Name: nolag-sync" in meta
    assert "nolag = nolag.cli:main" in entries and "nolag = nolag.testing" in entries
    # the test tools are bounded below their next major version
    test_reqs = re.findall(r'^Requires-Dist: (.*); extra == "test"$', meta, re.M)
    assert test_reqs and all("<" in req for req in test_reqs), test_reqs
