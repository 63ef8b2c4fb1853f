"""`router config validate FILE`, and the same check of `router serve --config FILE` before it starts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO


def add_commands(sub: Any) -> None:
    parser = sub.add_parser("config", help="runtime config files")
    actions = parser.add_subparsers(dest="action", required=True)
    validate = actions.add_parser(
        "validate", help="check a runtime-config YAML file; lists every error as `path: message`"
    )
    validate.add_argument("file", type=Path)
    validate.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    from router_impl.config.check import file_problems

    problems = file_problems(args.file)
    if problems:
        report(args.file, problems, sys.stderr)
        return 1
    print(f"{args.file}: valid")
    return 0


def report(path: Path, problems: list[str], out: TextIO) -> None:
    noun = "error" if len(problems) == 1 else "errors"
    print(f"{path}: {len(problems)} {noun}", file=out)
    for problem in problems:
        print(f"  {problem}", file=out)


def check_before_serve(config_path: Path | None, data_dir: Path) -> bool:
    """Whether `router serve` may start: a named config file must be valid, unless a last known good
    copy is cached in the data dir (the router then serves it, degraded, as when a reload fails)."""
    if config_path is None:
        return True
    from router_impl.config.check import file_problems

    problems = file_problems(config_path) if config_path.exists() else []
    if not problems:
        return True  # a missing file is the config service's to report (it may appear later)
    report(config_path, problems, sys.stderr)
    if _cached_config(data_dir / "config-lkg"):
        print(
            f"router: serving the last known good config cached in {data_dir / 'config-lkg'}", file=sys.stderr
        )
        return True
    print(
        "router: not started (fix the file, or check it with `router config validate FILE`)", file=sys.stderr
    )
    return False


def _cached_config(path: Path) -> bool:
    if not (path / "data.mdb").exists():
        return False
    from router_impl.config.lkg_cache import LastKnownGood

    cache = LastKnownGood(path)
    try:
        return cache.load() is not None
    finally:
        cache.close()
