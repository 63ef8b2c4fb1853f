#!/usr/bin/env python3
"""Fill a local wheelhouse with the pinned runtime dependencies for one Python version, downloading in
parallel (the package index here answers in seconds per package; one pip run asks it one at a time).
Runtime venvs (make smoke-pythons, make image-check) then install from it with --no-index.

    python tools/wheelhouse.py 3.12 .wheelhouse/3.12

The runtime set is the closure of pyproject.toml's [project.dependencies] (no dev extra), pinned by
constraints.txt, found from the installed metadata of the running environment (the dev venv).
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            found[canonicalize_name(name)] = version
    return found


def runtime_closure(python_version: str) -> set[str]:
    env = dict(default_environment()) | {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(name)
        for text in metadata.requires(req.name) or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate(env | {"extra": e}) for e in req.extras or {""}):
                todo.append(sub)
    return names


def main() -> int:
    version, target = sys.argv[1], Path(sys.argv[2])
    target.mkdir(parents=True, exist_ok=True)
    pinned = pins()
    wanted = sorted(f"{n}=={pinned[n]}" for n in runtime_closure(version) if n in pinned)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build = project["build-system"]["requires"]  # building the router's own wheel (unpinned, as pip does)
    wanted += build

    def download(pin: str) -> tuple[str, int]:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            *(() if pin in build else ("--no-deps",)),
            "--only-binary=:all:",
            "--python-version",
            version,
            "--dest",
            str(target),
            pin,
        ]
        return pin, subprocess.run(command, capture_output=True, check=False).returncode

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        failed = [pin for pin, code in pool.map(download, wanted) if code != 0]
    print(f"wheelhouse: {len(wanted) - len(failed)} of {len(wanted)} wheels for Python {version} in {target}")
    if failed:
        print(f"wheelhouse: not available as wheels: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
