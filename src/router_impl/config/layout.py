"""The object layout every source shares: one key per object (``<kind>/<id>``), JSON values, and
the whole-snapshot check that names the offending objects. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import quote, unquote

from pydantic import BaseModel, ValidationError

from router_impl.auth.keys import ApiKeyRecord
from router_impl.config.model import BackendConfig, BackendState, ModelPolicy, OrgLimits, RuntimeConfig
from router_impl.config.source import KINDS, ConfigInvalid, ObjectKind

SNAPSHOT = "(snapshot)"  # the problem key when no single object is to blame
_CLASSES: dict[ObjectKind, type[BaseModel]] = {
    "backends": BackendConfig,
    "models": ModelPolicy,
    "backend_states": BackendState,
    "keys": ApiKeyRecord,
    "limits": OrgLimits,  # keyed by organisation id
}


def object_key(kind: ObjectKind, object_id: str) -> str:
    """Ids are URL-quoted: model names may contain '/' (ids and names are otherwise key-safe)."""
    return f"{kind}/{quote(object_id, safe=':')}"


def parse_key(key: str) -> tuple[ObjectKind, str]:
    kind_name, sep, quoted = key.partition("/")
    kind = next((k for k in KINDS if k == kind_name), None)
    if kind is None or not sep or not quoted:
        raise ValueError(f"not <kind>/<id> with kind one of {', '.join(KINDS)}")
    object_id = unquote(quoted)
    if object_key(kind, object_id) != key:
        raise ValueError(f"not the canonical key of {object_id!r} (expected {object_key(kind, object_id)})")
    return kind, object_id


def encode(kind: ObjectKind, object_id: str, obj: BaseModel) -> bytes:
    """The stored value of one object; its own id must match ``object_id``."""
    if not isinstance(obj, _CLASSES[kind]):
        raise TypeError(f"a {kind} object must be a {_CLASSES[kind].__name__}, not {type(obj).__name__}")
    own = _own_id(obj)
    if own is not None and own != object_id:
        reason = f"the object's own id {own!r} differs from its key"
        raise ConfigInvalid({object_key(kind, object_id): reason})
    return obj.model_dump_json().encode()


def decode(kind: ObjectKind, object_id: str, value: bytes) -> BaseModel:
    try:
        obj = _CLASSES[kind].model_validate_json(value)
    except ValidationError as exc:
        raise ValueError(summary(exc)) from None
    own = _own_id(obj)
    if own is not None and own != object_id:
        raise ValueError(f"the object's own id {own!r} differs from its key")
    return obj


def with_change(
    objects: Mapping[str, bytes], kind: ObjectKind, object_id: str, value: bytes | None
) -> dict[str, bytes]:
    """A copy of ``objects`` with one object put (``value``) or removed (None)."""
    changed = dict(objects)
    key = object_key(kind, object_id)
    if value is None:
        changed.pop(key, None)
    else:
        changed[key] = value
    return changed


def references(kind: ObjectKind, object_id: str, obj: BaseModel | None) -> tuple[str, ...]:
    """Object keys that must exist for ``obj`` to be valid (a concurrent delete must not slip by)."""
    if kind == "backend_states":
        return (object_key("backends", object_id),)
    if isinstance(obj, ModelPolicy):
        return tuple(object_key("backends", b) for b in sorted(_backend_ids(obj)))
    return ()


def objects_of(config: RuntimeConfig) -> Iterator[tuple[ObjectKind, str, BaseModel]]:
    """Every object of a snapshot, backends first, so putting them in order keeps each step valid
    (how a file is seeded into etcd)."""
    for backend in config.backends:
        yield "backends", backend.id, backend
    for policy in config.models:
        yield "models", policy.model, policy
    for backend_id, state in config.backend_states.items():
        yield "backend_states", backend_id, state
    for record in config.api_keys:
        yield "keys", record.id, record
    for org, limits in config.org_limits.items():
        yield "limits", org, limits


def explode(config: RuntimeConfig) -> dict[str, bytes]:
    """The inverse of ``assemble``: one entry per object, in ``objects_of`` order."""
    return {object_key(kind, oid): encode(kind, oid, obj) for kind, oid, obj in objects_of(config)}


Memo = dict[str, tuple[bytes, BaseModel]]


def assemble(objects: Mapping[str, bytes], memo: Memo | None = None) -> RuntimeConfig:
    """The snapshot these objects make, in key order; ConfigInvalid names every bad object.

    ``memo`` (owned by the caller, reused across calls) keeps decoded objects, so a watcher
    re-decodes only what changed rather than every key on every change."""
    problems: dict[str, str] = {}
    parsed: dict[ObjectKind, dict[str, tuple[str, BaseModel]]] = {kind: {} for kind in KINDS}
    unreadable_backends: set[str] = set()  # already reported: references to them are no news
    for key in sorted(objects):
        try:
            kind, object_id = parse_key(key)
        except ValueError as exc:
            _add(problems, key, str(exc))
            continue
        try:
            parsed[kind][key] = (object_id, _decoded(kind, object_id, key, objects[key], memo))
        except ValueError as exc:
            _add(problems, key, str(exc))
            if kind == "backends":
                unreadable_backends.add(object_id)
    if memo is not None:
        for gone in memo.keys() - objects.keys():
            del memo[gone]
    backends = {key: o for key, (_, o) in parsed["backends"].items() if isinstance(o, BackendConfig)}
    models = {key: o for key, (_, o) in parsed["models"].items() if isinstance(o, ModelPolicy)}
    states = {key: (i, o) for key, (i, o) in parsed["backend_states"].items() if isinstance(o, BackendState)}
    keys = {key: o for key, (_, o) in parsed["keys"].items() if isinstance(o, ApiKeyRecord)}
    limits = {org: o for org, o in parsed["limits"].values() if isinstance(o, OrgLimits)}
    known_backends = {b.id for b in backends.values()} | unreadable_backends
    _cross_check(problems, known_backends, models, states, keys)
    if problems:
        raise ConfigInvalid(problems)
    try:
        return RuntimeConfig(
            backends=tuple(backends.values()),
            models=tuple(models.values()),
            api_keys=tuple(keys.values()),
            backend_states={backend_id: state for backend_id, state in states.values()},
            org_limits=limits,
        )
    except ValidationError as exc:
        raise ConfigInvalid({SNAPSHOT: summary(exc)}) from None


def _decoded(kind: ObjectKind, object_id: str, key: str, value: bytes, memo: Memo | None) -> BaseModel:
    remembered = memo.get(key) if memo is not None else None
    if remembered is not None and remembered[0] == value:
        return remembered[1]
    obj = decode(kind, object_id, value)
    if memo is not None:
        memo[key] = (value, obj)
    return obj


def summary(exc: ValidationError, limit: int = 5) -> str:
    """A ValidationError in one line, without the input values (they may be long or sensitive)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}".replace("\n", "; ")
        for e in errors[:limit]
    ]
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


def _cross_check(
    problems: dict[str, str],
    known_backends: set[str],
    models: Mapping[str, ModelPolicy],
    states: Mapping[str, tuple[str, BackendState]],
    keys: Mapping[str, ApiKeyRecord],
) -> None:
    """The whole-snapshot rules of RuntimeConfig, attributed to the objects that break them."""
    for key, policy in models.items():
        unknown = sorted(_backend_ids(policy) - known_backends)
        if unknown:
            _add(problems, key, f"names unknown backend(s) {', '.join(unknown)}")
    for key, (backend_id, _) in states.items():
        if backend_id not in known_backends:
            _add(problems, key, f"state of unknown backend {backend_id}")
    names = ((key, name) for key, p in models.items() for name in (p.model, *p.aliases))
    _flag_duplicates(problems, names, "model name or alias")
    _flag_duplicates(problems, ((key, r.key_hash) for key, r in keys.items()), "key hash")


def _flag_duplicates(problems: dict[str, str], owned: Iterable[tuple[str, str]], what: str) -> None:
    owners: dict[str, list[str]] = {}
    for key, value in owned:
        owners.setdefault(value, []).append(key)
    for value, holders in owners.items():
        if len(holders) > 1:
            for key in dict.fromkeys(holders):
                _add(problems, key, f"{what} {value!r} is used {len(holders)} times ({', '.join(holders)})")


def _backend_ids(policy: ModelPolicy) -> set[str]:
    lists = [policy.backends, *(o.backends for o in policy.org_overrides.values())]
    return {wb.backend_id for backends in lists for wb in backends}


def _own_id(obj: BaseModel) -> str | None:
    if isinstance(obj, BackendConfig | ApiKeyRecord):
        return obj.id
    if isinstance(obj, ModelPolicy):
        return obj.model
    return None


def _add(problems: dict[str, str], key: str, reason: str) -> None:
    problems[key] = f"{problems[key]}; {reason}" if key in problems else reason
