"""The wheel folder for an offline install, and the pins that keep a node's own PyTorch (README "Offline GPU nodes").

    python scripts/wheels.py download DIR [--exclude PATTERN ...] [--platform TAG] [--python-version X.Y]
    python scripts/wheels.py pins torch torchvision

`download` resolves the project's dependencies, its dev extra and its build backend (plus pip and wheel) for the
target with `pip install --dry-run --report` (metadata only), drops every package matching an --exclude pattern
together with whatever only those packages need (torch's CUDA libraries, triton, sympy, …), then fetches the rest
as wheels with `pip download --no-deps`, and prints the folder's contents and size. `pins` prints `name==version`
for each of the named packages the running interpreter has (a constraints file), and fails without the first one.
Standalone: the standard library and pip only, so any Python ≥ 3.11 with pip runs it.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
except ImportError:  # pip always vendors it
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = ["pip", "wheel"]  # installed first on the node; setuptools comes from [build-system] requires


def normalize(name: str) -> str:
    """PEP 503: `Typing_Extensions` and `typing-extensions` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def excluded(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(normalize(name), normalize(p)) for p in patterns)


def project_requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The project's dependencies, the named extras and its build backend's requirements, as requirement strings."""
    data = tomllib.loads(pyproject.read_text())
    reqs = list(data["project"].get("dependencies", []))
    optional = data["project"].get("optional-dependencies", {})
    for extra in extras:
        reqs += optional[extra]
    return reqs + list(data.get("build-system", {}).get("requires", [])) + BOOTSTRAP


def _marker_holds(marker: Marker | None, env: dict, extras: set[str]) -> bool:
    """Whether a dependency edge is live. Markers on the platform or Python alone count as true (pip evaluates those
    on the running interpreter, not the target), so the walk may keep a package too many, never one too few."""
    if marker is None or "extra" not in str(marker):
        return True
    return any(marker.evaluate({**env, "extra": extra}) for extra in extras | {""})


def select(report: dict, roots: list[str], exclude: list[str]) -> dict[str, str]:
    """name → version of the resolved packages reachable from `roots` without passing through an excluded one."""
    env = {k: str(v) for k, v in report.get("environment", {}).items()}
    items = {normalize(i["metadata"]["name"]): i for i in report["install"]}
    extras_seen: dict[str, set[str]] = {}  # a package is walked again when a later edge asks for more extras
    stack = [Requirement(r) for r in roots]
    while stack:
        req = stack.pop()
        name = normalize(req.name)
        if excluded(name, exclude) or name not in items:
            continue
        extras = {normalize(e) for e in req.extras} | {normalize(e) for e in items[name].get("requested_extras") or []}
        if name in extras_seen and extras <= extras_seen[name]:
            continue
        live = extras_seen.setdefault(name, set())
        live |= extras
        for dep in items[name]["metadata"].get("requires_dist") or []:
            dep_req = Requirement(dep)
            if _marker_holds(dep_req.marker, env, live):
                stack.append(dep_req)
    return {name: items[name]["metadata"]["version"] for name in sorted(extras_seen)}


LEGACY_MANYLINUX = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


def expand_platform(tag: str) -> list[str]:
    """A manylinux tag and every older one the node accepts too, as pip does for its own machine (but not for
    --platform): manylinux_2_28_x86_64 also takes manylinux2014_x86_64 wheels. Other tags pass through."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag) or re.fullmatch(
        r"(manylinux2014|manylinux2010|manylinux1)_(\w+)", tag
    )
    if not m:
        return [tag]
    glibc = LEGACY_MANYLINUX.get(m.group(1)) or int(m.group(1))
    arch = m.group(2)
    oldest = 5 if arch in ("x86_64", "i686") else 17
    tags = []
    for minor in range(glibc, oldest - 1, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        tags += [f"{legacy}_{arch}" for legacy, v in LEGACY_MANYLINUX.items() if v == minor]
    return tags


def target_flags(platform: str | None, python_version: str | None) -> list[str]:
    flags = ["--only-binary=:all:"]  # the node has no compiler to count on: wheels only
    for tag in (platform or "").split():
        for expanded in expand_platform(tag):
            flags += ["--platform", expanded]
    if python_version:
        flags += ["--python-version", python_version]
    return flags


def resolve(reqs: list[str], flags: list[str], workdir: Path) -> dict:
    report = workdir / "report.json"
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    pip += ["--target", str(workdir / "target"), "--report", str(report), *flags, *reqs]
    subprocess.run(pip, check=True)
    return json.loads(report.read_text())


def download(dest: Path, exclude: list[str], extras: list[str], platform: str | None, python_version: str | None):
    dest.mkdir(parents=True, exist_ok=True)
    flags = target_flags(platform, python_version)
    roots = project_requirements(ROOT / "pyproject.toml", extras)
    with tempfile.TemporaryDirectory() as tmp:
        report = resolve(roots, flags, Path(tmp))
    pins = select(report, roots, exclude)
    dropped = sorted({normalize(i["metadata"]["name"]) for i in report["install"]} - set(pins))
    print(f"resolved {len(report['install'])} packages; keeping {len(pins)}, leaving out {len(dropped)}: {dropped}")
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest), *flags]
    subprocess.run(pip + [f"{n}=={v}" for n, v in pins.items()], check=True)
    files = sorted(p for p in dest.iterdir() if p.is_file())
    have = {normalize(p.name.split("-")[0]) for p in files}
    missing = [n for n in pins if n not in have]
    if missing:
        sys.exit(f"{dest}: no wheel for {missing}")
    for p in files:
        print(f"{p.stat().st_size / 2**20:9.1f} MiB  {p.name}")
    total = sum(p.stat().st_size for p in files)
    print(f"{dest}: {len(files)} wheels, {total / 2**20:.0f} MiB")


def pins(names: list[str]) -> None:
    """`name==version` of each named package this interpreter has; the first one is required."""
    for i, name in enumerate(names):
        try:
            print(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            if i == 0:
                sys.exit(f"SYSTEM_TORCH=1 but {sys.executable} has no {name}: build on an interpreter that has it")
            print(f"# {name}: not installed on {sys.executable}, pip installs it", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="resolve and fetch the wheel folder")
    dl.add_argument("dest", type=Path)
    dl.add_argument("--exclude", action="append", default=[], help="package name or glob (nvidia-*) to leave out")
    dl.add_argument("--extra", action="append", default=None, help="extras to include (default: dev)")
    dl.add_argument("--platform", help="the node's wheel platform tags, e.g. manylinux_2_28_x86_64 (older ones follow)")
    dl.add_argument("--python-version", help="the node's Python, e.g. 3.12")
    pn = sub.add_parser("pins", help="print a constraints file pinning the installed versions")
    pn.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "download":
        extras = ["dev"] if args.extra is None else args.extra
        download(args.dest, args.exclude, extras, args.platform, args.python_version)
    else:
        pins(args.names)


if __name__ == "__main__":
    main()
