"""The offline and system-torch install (README "Offline GPU nodes"), checked without downloading anything: the pip
flags `make -n` prints for WHEELS / SYSTEM_TORCH, and scripts/wheels.py's choice of what goes into the wheel folder."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("wheels_script", ROOT / "scripts" / "wheels.py")
wheels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wheels)

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def dry_run(tmp_path: Path, *args: str) -> str:
    """The recipe `make -n` would run, for a venv that does not exist yet (so the install recipe is printed). Without
    the MAKEFLAGS of a `make test SYSTEM_TORCH=1` that started pytest, which would pass its variables on."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    env = {k: v for k, v in env.items() if k not in ("WHEELS", "SYSTEM_TORCH", "WHEELS_EXCLUDE", "PLATFORM", "PYVER")}
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), f"VENV={tmp_path / 'venv'}", "PYTHON=python3", *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return out.stdout


@needs_make
def test_plain_install_uses_the_index_and_an_isolated_venv(tmp_path):
    out = dry_run(tmp_path, "install")
    assert f"python3 -m venv  {tmp_path / 'venv'}" in out
    assert "--no-index" not in out and "--find-links" not in out
    assert "--system-site-packages" not in out and "--constraint" not in out
    assert "-e '.[dev,crf]'" in out


@needs_make
def test_wheels_and_system_torch_install_offline_on_the_nodes_torch(tmp_path):
    out = dry_run(tmp_path, "install", "WHEELS=/x/wheels", "SYSTEM_TORCH=1")
    venv = tmp_path / "venv"
    assert f"python3 -m venv --system-site-packages {venv}" in out
    assert "include-system-site-packages = true" in out  # refuses a venv built without it
    assert "-m pip install --no-index --find-links /x/wheels --upgrade pip" in out
    assert f"scripts/wheels.py pins torch torchvision > {venv}/system-torch.txt" in out
    assert f"--no-index --find-links /x/wheels --constraint {venv}/system-torch.txt -e '.[dev]'" in out


@needs_make
def test_system_torch_0_is_off(tmp_path):
    out = dry_run(tmp_path, "install", "SYSTEM_TORCH=0")
    assert "--system-site-packages" not in out and "--constraint" not in out


@needs_make
def test_make_wheels_flags(tmp_path):
    out = dry_run(
        tmp_path,
        "wheels",
        "WHEELS=/w",
        "SYSTEM_TORCH=1",
        "WHEELS_EXCLUDE=lightning",
        "PLATFORM=manylinux2014_x86_64",
        "PYVER=3.12",
    )
    assert "scripts/wheels.py download /w" in out
    for pattern in ("torch", "torchvision", "triton", "nvidia-*", "cuda-*", "lightning"):
        assert f"--exclude '{pattern}'" in out
    assert "--platform 'manylinux2014_x86_64'" in out and "--python-version 3.12" in out
    full = dry_run(tmp_path, "wheels", "WHEELS=/w")
    assert "--exclude" not in full and "--platform" not in full


def item(name: str, version: str, *requires: str, extras: tuple[str, ...] = ()) -> dict:
    meta = {"name": name, "version": version, "requires_dist": list(requires)}
    return {"metadata": meta, "requested_extras": list(extras)}


REPORT = {
    "environment": {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"},
    "install": [
        item("torch", "2.14.1", "nvidia-cublas==13.1; platform_system == 'Linux'", "sympy>=1.13", "filelock"),
        item("nvidia-cublas", "13.1"),
        item("sympy", "1.14", "mpmath<1.4"),
        item("mpmath", "1.3"),
        item("triton", "3.8"),
        item("filelock", "4.3"),
        item("Lightning", "2.6", "torch>=2.1", "fsspec[http]", "filelock", "pytest; extra == 'test'"),
        item("huggingface-hub", "2.4", "fsspec>=2023.5"),  # fsspec without its extra, on another path
        item("fsspec", "2026.9", "aiohttp; extra == 'http'", "gcsfs; extra == 'gcs'"),
        item("aiohttp", "3.14"),
        item("gcsfs", "1.0"),  # resolved for nothing here: no live edge reaches it
        item("pytest", "9.2", "iniconfig"),
        item("iniconfig", "2.3"),
        item("Typing_Extensions", "4.16"),
    ],
}
ROOTS = ["torch>=2.4", "lightning>=2.4", "huggingface-hub", "typing-extensions; python_version < '3.12'", "pytest>=8"]


@pytest.mark.parametrize("order", [1, -1], ids=["roots", "reversed"])
def test_select_drops_torch_and_what_only_it_needs(order):
    keep = wheels.select(REPORT, ROOTS[::order], ["torch", "torchvision", "triton", "nvidia-*", "cuda-*"])
    # filelock stays: Lightning needs it too. sympy, mpmath and the CUDA wheels are torch's alone. aiohttp stays
    # whichever path reaches fsspec first: Lightning's fsspec[http] asks for it.
    assert keep == {
        "aiohttp": "3.14",
        "filelock": "4.3",
        "fsspec": "2026.9",
        "huggingface-hub": "2.4",
        "iniconfig": "2.3",
        "lightning": "2.6",
        "pytest": "9.2",
        "typing-extensions": "4.16",  # an environment marker never drops a package
    }


def test_select_without_excludes_keeps_every_live_package():
    keep = wheels.select(REPORT, ROOTS, [])
    assert set(keep) == {wheels.normalize(i["metadata"]["name"]) for i in REPORT["install"]} - {"gcsfs", "triton"}


def test_select_more_excludes_for_a_node_with_lightning():
    keep = wheels.select(REPORT, ROOTS, ["torch", "nvidia-*", "Lightning"])
    assert set(keep) == {"huggingface-hub", "fsspec", "pytest", "iniconfig", "typing-extensions"}


def test_project_requirements_carry_the_build_backend_and_bootstrap():
    reqs = wheels.project_requirements(ROOT / "pyproject.toml", ["dev"])
    names = {wheels.normalize(r.split(">")[0].split("=")[0].split(";")[0].strip()) for r in reqs}
    assert {"torch", "torchvision", "lightning", "pytest", "ruff", "setuptools", "pip", "wheel"} <= names


def test_platform_takes_the_older_manylinux_tags_too():
    tags = wheels.expand_platform("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-1] == "manylinux1_x86_64"
    assert {"manylinux_2_27_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux2010_x86_64"} <= set(
        tags
    )
    assert wheels.expand_platform("manylinux2014_aarch64") == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert wheels.expand_platform("win_amd64") == ["win_amd64"]
    flags = wheels.target_flags("manylinux_2_17_x86_64 macosx_14_0_arm64", "3.12")
    assert flags[:3] == ["--only-binary=:all:", "--platform", "manylinux_2_17_x86_64"]
    assert flags[-4:] == ["--platform", "macosx_14_0_arm64", "--python-version", "3.12"]


def test_pins_print_installed_versions_and_require_the_first(capsys):
    wheels.pins(["pytest", "surely-not-installed-pkg"])
    assert capsys.readouterr().out.strip() == f"pytest=={pytest.__version__}"
    with pytest.raises(SystemExit, match="has no surely-not-installed-pkg"):
        wheels.pins(["surely-not-installed-pkg"])


def test_pins_command_line():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "wheels.py"), "pins", "pytest"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"pytest=={pytest.__version__}"
