"""`router config apply FILE` and `router config validate FILE`.

`apply` writes a whole runtime-config file -- backends (with their credential
references), models, backend states, API keys (hashes), organisation limits -- to the config source
(etcd when ROUTER_ETCD_ENDPOINTS is set, else the config file), or refuse, before writing anything,
with the list of what cannot be applied.

Objects only in the source (keys created at run time, say) are kept; every object of the file is
put, in an order where each step leaves a valid config, so routers following the source never see
a half-applied, invalid one. `validate` lists every error of a file as `path: message`, and
`router serve --config FILE` makes the same check before it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from router_impl.config.layout import assemble, explode, object_key, objects_of, summary
from router_impl.config.model import RuntimeConfig
from router_impl.config.source import ConfigInvalid, ConfigSource, SourceUnavailable


def add_commands(sub: Any) -> None:
    parser = sub.add_parser("config", help="runtime config in its source (etcd or the config file)")
    actions = parser.add_subparsers(dest="action", required=True)
    apply = actions.add_parser(
        "apply", help="apply a whole runtime-config YAML file (every kind) to etcd or the config file"
    )
    apply.add_argument("file", type=Path)
    apply.add_argument("--etcd-endpoints", help="host:port,... (default: ROUTER_ETCD_ENDPOINTS)")
    apply.add_argument("--etcd-prefix", help="key prefix (default: ROUTER_ETCD_PREFIX or /api-router/)")
    apply.add_argument(
        "--config-file", type=Path, help="without etcd: the file (default: ROUTER_CONFIG_PATH)"
    )
    apply.add_argument("--dry-run", action="store_true", help="check and list the changes, write nothing")
    apply.set_defaults(func=run_apply)
    validate = actions.add_parser(
        "validate", help="check a runtime-config YAML file; lists every error as `path: message`"
    )
    validate.add_argument("file", type=Path)
    validate.set_defaults(func=run_validate)


def read_document(path: Path) -> RuntimeConfig:
    """The file as a validated config; ConfigInvalid names every part that cannot be applied."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigInvalid({str(path): f"cannot read: {exc}"}) from None
    if not isinstance(raw, dict):
        raise ConfigInvalid({str(path): "not a mapping of backends, models, api_keys, org_limits, ..."})
    try:
        return RuntimeConfig.model_validate(raw)
    except ValidationError as exc:
        problems: dict[str, str] = {}
        for error in exc.errors(include_url=False, include_input=False, include_context=False):
            where = ".".join(str(p) for p in error["loc"]) or "(file)"
            problems[where] = f"{problems[where]}; {error['msg']}" if where in problems else error["msg"]
        raise ConfigInvalid(problems or {str(path): summary(exc)}) from None


def _source(args: argparse.Namespace) -> tuple[ConfigSource, str]:
    from router_impl.config.etcd_source import DEFAULT_PREFIX, EtcdSource
    from router_impl.config.file_source import FileSource
    from router_impl.settings import Settings

    settings = Settings()
    endpoints = args.etcd_endpoints or settings.etcd_endpoints
    if endpoints:
        prefix = args.etcd_prefix or settings.etcd_prefix or DEFAULT_PREFIX
        hosts = [e.strip() for e in endpoints.split(",") if e.strip()]
        return EtcdSource(hosts, prefix, settings.etcd_timeout_seconds), f"etcd {','.join(hosts)} {prefix}"
    path = args.config_file or settings.config_path or settings.data_dir / "runtime-config.yaml"
    return FileSource(path, missing_ok=True), f"file {path}"


async def apply(source: ConfigSource, config: RuntimeConfig, *, dry_run: bool) -> tuple[list[str], int]:
    """(objects written, objects already as in the file); raises ConfigInvalid before any write."""
    held = explode((await source.snapshot()).config)
    wanted = explode(config)
    assemble({**held, **wanted})  # the whole result must be valid, or nothing is written
    changed = []
    for kind, object_id, obj in objects_of(config):
        key = object_key(kind, object_id)
        if held.get(key) != wanted[key]:
            changed.append((key, kind, object_id, obj))
    for _, kind, object_id, obj in changed if not dry_run else []:
        await source.put(kind, object_id, obj)
    return [key for key, *_ in changed], len(wanted) - len(changed)


def run_apply(args: argparse.Namespace) -> int:
    try:
        config = read_document(args.file)
    except ConfigInvalid as exc:
        return _refuse(args.file, exc.problems)
    source, where = _source(args)

    async def run() -> tuple[list[str], int]:
        try:
            return await apply(source, config, dry_run=args.dry_run)
        finally:
            await source.close()

    try:
        written, unchanged = asyncio.run(run())
    except ConfigInvalid as exc:
        return _refuse(args.file, exc.problems)
    except SourceUnavailable as exc:
        print(f"router: {where}: {exc}; nothing written", file=sys.stderr)
        return 1
    verb = "would apply" if args.dry_run else "applied"
    for key in written:
        print(f"{verb} {key}")
    print(json.dumps({"target": where, verb.replace(" ", "_"): len(written), "unchanged": unchanged}))
    return 0


def _refuse(path: Path, problems: dict[str, str]) -> int:
    print(f"router: {path} cannot be applied; nothing was written:", file=sys.stderr)
    for where, reason in sorted(problems.items()):
        print(f"  {where}: {reason}", file=sys.stderr)
    return 2


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
