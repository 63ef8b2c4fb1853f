"""Check the Helm chart offline: lint, render and validate it with every values file (`make helm-check`).

Runs in its own venv (`.venv-helm`: helm-python-sdk, kubernetes-validate; see the Makefile). For the
default values and values-{dev,staging,production}.yaml, plus a few overrides that reach the template
branches those files do not, it

- lints the chart (`helm lint --strict`, which also checks values.schema.json) for each Kubernetes version,
- renders it and validates every manifest with kubernetes-validate (strict: unknown fields fail) for the
  oldest Kubernetes the chart supports and the newest kubernetes-validate knows,
- validates ServiceMonitor and PrometheusRule (CRDs, not in kubernetes-validate) against the subset of
  the Prometheus operator's CRD schema the chart uses,
- checks what the router relies on: probes on its health endpoints, the non-root security context,
  a grace period covering preStop + uvicorn's graceful shutdown + the outbox drain, a data volume of
  at least 1.1 x ROUTER_OUTBOX_MAX_BYTES, ROUTER_* names that exist in settings.py, exactly the alerts
  of docs/metrics.md with runbook links, and the production requirements,
- validates each rendered runtime config with the router's own loader (`--router-python`),
- and proves that bad values fail: schema violations and the template's own guards.

Exits non-zero on any error.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "api-router"
RELEASE = "api-router"
NAMESPACE = "api-router"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion); the newest is kubernetes-validate's.
MIN_KUBE = "1.29.0"

VALUES_FILES = ["values.yaml", "values-dev.yaml", "values-staging.yaml", "values-production.yaml"]

EXPECTED_ALERTS = {
    "RouterHighErrorRate",
    "RouterHighLatency",
    "RouterBackendUnhealthy",
    "RouterHighFailoverRate",
    "RouterUsageBufferSize",
    "RouterUsageBufferAge",
    "RouterRateLimitDenials",
    "RouterServiceUnavailable",
}
# The sections of docs/runbooks.md the alerts may link to.
RUNBOOK_ANCHORS = {
    "backend-degradation",
    "failover-recovery",
    "outbox-backlog-recovery",
    "kafka-outage",
    "startup-and-shutdown",
    "reading-health",
    "redis-outage",
}
SECRET_ENV = {
    "ROUTER_SECRET_KEY",
    "ROUTER_BOOTSTRAP_ADMIN_KEY_SHA256",
    "ROUTER_IDENTITY_TOKEN",
    "ROUTER_BUDGET_SERVICE_TOKEN",
    "ROUTER_REDIS_URL",
}
CRD_GROUP = "monitoring.coreos.com/"

# Overrides of the default values that must render and validate: template branches the values files
# do not reach. (name, values, oldest Kubernetes version to validate against)
VARIANTS: list[tuple[str, dict[str, Any], str]] = [
    (
        "existing PVC, pinned digest, no startup probe",
        {
            "dataVolume": {
                "type": "persistentVolumeClaim",
                "persistentVolumeClaim": {"claimName": "router-data"},
            },
            "image": {"digest": "sha256:" + "a" * 64},
            "probes": {"startup": {"enabled": False}},
        },
        MIN_KUBE,
    ),
    (
        "etcd config, existing secrets, memory-based emptyDir",
        {
            "router": {
                "etcdEndpoints": "etcd:2379",
                "kafkaBootstrap": "kafka:9092",
                "identityUrl": "http://id:80",
            },
            "secrets": {"redisUrl": {"existingSecret": "redis"}, "identityToken": {"existingSecret": "id"}},
            "dataVolume": {"emptyDir": {"medium": "Memory"}},
            "serviceAccount": {"create": False},
        },
        MIN_KUBE,
    ),
    (
        "existing runtime-config ConfigMap, HPA on memory",
        {
            "runtimeConfig": {"existingConfigMap": "router-policies"},
            "autoscaling": {
                "enabled": True,
                "targetCPUUtilizationPercentage": None,
                "targetMemoryUtilizationPercentage": 80,
            },
            "podDisruptionBudget": {"enabled": True},
        },
        MIN_KUBE,
    ),
    ("native preStop sleep action", {"lifecycle": {"preStopMode": "sleepAction"}}, "1.30.0"),
    (
        "tracing to an OTLP collector",
        {"tracing": {"enabled": True, "otlpEndpoint": "http://otel-collector:4318", "sampleRatio": 0.25}},
        MIN_KUBE,
    ),
    (
        "alerts partly disabled, custom selector",
        {
            "metrics": {
                "prometheusRule": {
                    "enabled": True,
                    "selector": 'service="api-router"',
                    "alerts": {"RouterRateLimitDenials": {"enabled": False}},
                }
            }
        },
        MIN_KUBE,
    ),
]

# Values that must be refused: (name, values, where, words of the expected message); where is "schema"
# (values.schema.json, also flagged by lint) or "render" (a guard in _helpers.tpl / the templates).
NEGATIVE: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown top-level key", {"replicas": 3}, "schema", "replicas"),
    ("replicaCount is a string", {"replicaCount": "three"}, "schema", "/replicaCount"),
    ("zero workers", {"router": {"workers": 0}}, "schema", "/router/workers"),
    ("unknown router setting key", {"router": {"redis": "redis://r:6379"}}, "schema", "redis"),
    (
        "password in router.redisUrl",
        {"router": {"redisUrl": "redis://:hunter2@redis:6379/0"}},
        "schema",
        "/router/redisUrl",
    ),
    (
        "secret through router.env",
        {"router": {"env": {"ROUTER_SECRET_KEY": "x" * 40}}},
        "schema",
        "ROUTER_SECRET_KEY",
    ),
    ("non-ROUTER_ name in router.env", {"router": {"env": {"PATH": "/bin"}}}, "schema", "'PATH'"),
    (
        "secret value in extraEnv",
        {"extraEnv": [{"name": "ROUTER_IDENTITY_TOKEN", "value": "t"}]},
        "schema",
        "/extraEnv/0",
    ),
    ("root user allowed", {"podSecurityContext": {"runAsNonRoot": False}}, "schema", "runAsNonRoot"),
    (
        "privilege escalation",
        {"securityContext": {"allowPrivilegeEscalation": True}},
        "schema",
        "allowPrivilegeEscalation",
    ),
    ("bad pull policy", {"image": {"pullPolicy": "Sometimes"}}, "schema", "/image/pullPolicy"),
    ("bad data volume type", {"dataVolume": {"type": "hostPath"}}, "schema", "/dataVolume/type"),
    ("bad quantity", {"dataVolume": {"emptyDir": {"sizeLimit": "4 gigs"}}}, "schema", "sizeLimit"),
    (
        "unknown alert",
        {"metrics": {"prometheusRule": {"alerts": {"RouterOops": {"enabled": True}}}}},
        "schema",
        "RouterOops",
    ),
    (
        "bad alert duration",
        {"metrics": {"prometheusRule": {"alerts": {"RouterHighLatency": {"for": "soon"}}}}},
        "schema",
        "RouterHighLatency/for",
    ),
    (
        "grace period shorter than the drain",
        {"terminationGracePeriodSeconds": 30},
        "render",
        "terminationGracePeriodSeconds",
    ),
    (
        "redis URL twice",
        {"router": {"redisUrl": "redis://r:6379"}, "secrets": {"redisUrl": {"existingSecret": "redis"}}},
        "render",
        "not both",
    ),
    (
        "shared PVC with 2 replicas",
        {
            "replicaCount": 2,
            "dataVolume": {"type": "persistentVolumeClaim", "persistentVolumeClaim": {"claimName": "d"}},
        },
        "render",
        "replicaCount 1",
    ),
    ("PVC without a claim name", {"dataVolume": {"type": "persistentVolumeClaim"}}, "render", "claimName"),
    (
        "PDB blocking every eviction",
        {"podDisruptionBudget": {"enabled": True, "minAvailable": 1}},
        "render",
        "no node can ever be drained",
    ),
    (
        "PDB with both bounds",
        {"replicaCount": 3, "podDisruptionBudget": {"enabled": True, "minAvailable": 1, "maxUnavailable": 1}},
        "render",
        "not both",
    ),
    (
        "HPA min above max",
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}},
        "render",
        "minReplicas",
    ),
    (
        "router.env duplicates a chart setting",
        {"router": {"env": {"ROUTER_LOG_LEVEL": "debug"}}},
        "render",
        "duplicates",
    ),
    (
        "runtime config content with etcd",
        {"router": {"etcdEndpoints": "etcd:2379"}, "runtimeConfig": {"content": {"backends": []}}},
        "render",
        "router config apply",
    ),
]

# The part of the Prometheus operator's CRDs (monitoring.coreos.com/v1) the chart renders.
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string"},
        "labels": _STRMAP,
    },
}
_RELABEL = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "action": {"type": "string"},
            "modulus": {"type": "integer"},
            "regex": {"type": "string"},
            "replacement": {"type": "string"},
            "separator": {"type": "string"},
            "sourceLabels": {"type": "array", "items": {"type": "string"}},
            "targetLabel": {"type": "string"},
        },
    },
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "minProperties": 1,
                    "properties": {"matchLabels": _STRMAP, "matchExpressions": {"type": "array"}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "relabelings": _RELABEL,
                            "metricRelabelings": _RELABEL,
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["alert", "expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "keep_firing_for": _DURATION,
                                        "labels": _STRMAP,
                                        "annotations": _STRMAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}
CRD_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA, "PrometheusRule": PROMETHEUS_RULE_SCHEMA}


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")
        print(f"  ERROR {message}", flush=True)


@dataclass
class Rendered:
    name: str
    values: dict[str, Any]
    merged: dict[str, Any]
    docs: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str) -> dict[str, Any] | None:
        found = self.of_kind(kind)
        return found[0] if len(found) == 1 else None


# ------------------------------------------------------------------------------------------ facts


def settings_env_names() -> set[str]:
    """The environment names of router_impl.settings.Settings (parsed, not imported): ROUTER_<FIELD>,
    or for a field with a validation_alias its alias names (pydantic-settings adds no prefix to those)."""
    tree = ast.parse((ROOT / "src" / "router_impl" / "settings.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Settings":
            names: set[str] = set()
            for stmt in node.body:
                if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                    continue
                alias = next(
                    (
                        kw.value
                        for kw in (stmt.value.keywords if isinstance(stmt.value, ast.Call) else [])
                        if kw.arg in ("validation_alias", "alias")
                    ),
                    None,
                )
                if alias is None:
                    names.add("ROUTER_" + stmt.target.id.upper())
                else:
                    names |= {
                        c.value.upper()
                        for c in ast.walk(alias)
                        if isinstance(c, ast.Constant) and isinstance(c.value, str)
                    }
            return names
    raise SystemExit("helm-check: no Settings class in src/router_impl/settings.py")


def uvicorn_graceful_seconds(report: Report) -> int:
    """`router serve`'s timeout_graceful_shutdown, which must equal the chart's constant."""
    cli = (ROOT / "src" / "router_impl" / "cli" / "commands.py").read_text(encoding="utf-8")
    helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    in_cli = re.search(r"timeout_graceful_shutdown=(\d+)", cli)
    in_chart = re.search(r'define "api-router.uvicornGracefulSeconds" -}}(\d+)', helpers)
    if not in_cli or not in_chart:
        report.error(
            "chart",
            "cannot find timeout_graceful_shutdown in cli/commands.py"
            " or uvicornGracefulSeconds in _helpers.tpl",
        )
        return 30
    if in_cli.group(1) != in_chart.group(1):
        report.error(
            "chart",
            f"_helpers.tpl uvicornGracefulSeconds {in_chart.group(1)}"
            f" != cli/commands.py timeout_graceful_shutdown {in_cli.group(1)}",
        )
    return int(in_cli.group(1))


def exported_metrics() -> set[str] | None:
    """Metric names of docs/metrics.md's table (None when the file is absent)."""
    path = ROOT / "docs" / "metrics.md"
    if not path.exists():
        return None
    return set(re.findall(r"^\| `(router_[a-z0-9_]+)` \|", path.read_text(encoding="utf-8"), re.MULTILINE))


def runbook_sections() -> set[str] | None:
    """GitHub anchors of docs/runbooks.md's sections (None when the file is absent)."""
    path = ROOT / "docs" / "runbooks.md"
    if not path.exists():
        return None
    headings = re.findall(r"^##+ (.+?)\s*$", path.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_FACTORS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_FACTORS.update({"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60})


def quantity_bytes(text: str) -> float:
    match = _QUANTITY.match(str(text))
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    return float(match.group(1)) * _FACTORS[match.group(2)]


# ------------------------------------------------------------------------------------ rendering


def render(chart: helm.Chart, name: str, values: dict[str, Any], report: Report) -> Rendered | None:
    try:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    except helm.HelmError as exc:
        report.error(name, f"render failed: {exc}")
        return None
    docs: list[dict[str, Any]] = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            if "{{" in text or "<no value>" in text:
                report.error(name, "NOTES.txt has unrendered output")
            continue
        try:
            loaded = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            report.error(name, f"{template} is not YAML: {exc}")
            continue
        for doc in loaded:
            if doc is None:
                continue
            if not isinstance(doc, dict):
                report.error(name, f"{template}: a document is not a mapping")
                continue
            if "<no value>" in json.dumps(doc):
                report.error(
                    name, f"{template}: '<no value>' rendered (a value the template expects is missing)"
                )
            docs.append(doc)
    return Rendered(name, values, chart.merge_values(values), docs)


def lint(name: str, values: dict[str, Any] | None, kube_versions: Iterable[str], report: Report) -> None:
    for version in kube_versions:
        result = helm.lint(CHART, values, strict=True, kube_version=f"v{version}")
        for message in result.get("messages", []):
            if message.get("severity", 0) >= 2:  # warning or error; 1 is info ("icon is recommended")
                report.error(name, f"helm lint (k8s {version}) {message.get('path')}: {message.get('error')}")
        for problem in result.get("errors", []):
            if not any(problem == m.get("error") for m in result.get("messages", [])):
                report.error(name, f"helm lint (k8s {version}): {problem}")


# ----------------------------------------------------------------------------------- validation


def validate_manifests(rendered: Rendered, kube_versions: list[str], report: Report) -> None:
    seen: set[tuple[str, str]] = set()
    for doc in rendered.docs:
        kind, api = doc.get("kind"), doc.get("apiVersion")
        meta = doc.get("metadata") or {}
        label = f"{kind}/{meta.get('name')}"
        if not kind or not api or not meta.get("name"):
            report.error(rendered.name, f"a manifest lacks apiVersion, kind or metadata.name: {label}")
            continue
        if (kind, meta["name"]) in seen:
            report.error(rendered.name, f"{label} rendered twice")
        seen.add((kind, meta["name"]))
        if meta.get("namespace") != NAMESPACE:
            report.error(rendered.name, f"{label} is not in the release namespace")
        if str(api).startswith(CRD_GROUP):
            schema = CRD_SCHEMAS.get(kind)
            if schema is None:
                report.error(rendered.name, f"{label}: no schema for {api} {kind}")
                continue
            for err in jsonschema.Draft7Validator(schema).iter_errors(doc):
                path = "/".join(str(p) for p in err.absolute_path)
                report.error(rendered.name, f"{label} (CRD subset schema) at /{path}: {err.message}")
            continue
        for version in kube_versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = "/".join(str(p) for p in err.path)
                report.error(
                    rendered.name, f"{label} invalid for Kubernetes {version} at /{path}: {err.message}"
                )
            except kubernetes_validate.SchemaNotFoundError as err:
                report.error(rendered.name, f"{label}: {err.message}")


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "router")


def check_deployment(rendered: Rendered, facts: Facts, report: Report) -> None:
    where = rendered.name
    deployment = rendered.one("Deployment")
    env_cm = next((d for d in rendered.of_kind("ConfigMap") if d["metadata"]["name"].endswith("-env")), None)
    if deployment is None or env_cm is None:
        report.error(where, "expected one Deployment and its -env ConfigMap")
        return
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    env: dict[str, str] = dict(env_cm.get("data") or {})
    secret_env = {e["name"] for e in container.get("env", []) if "valueFrom" in e}

    # The entry point and its health endpoints.
    if container.get("command") != ["router"] or container.get("args", [None])[0] != "serve":
        report.error(where, "the container must run `router serve`")
    args = container.get("args", [])
    if "--workers" not in args:
        report.error(where, "router serve without --workers")
    for probe, path in (("livenessProbe", "/v1/status/healthz"), ("readinessProbe", "/v1/status/readyz")):
        got = (container.get(probe) or {}).get("httpGet", {}).get("path")
        if got != path:
            report.error(where, f"{probe} must GET {path}, not {got}")

    # Security: non-root, read-only root with writable data dir and /tmp, no capabilities, seccomp.
    sc, psc = container.get("securityContext") or {}, pod.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        report.error(where, "runAsNonRoot is not set")
    if sc.get("allowPrivilegeEscalation") is not False:
        report.error(where, "allowPrivilegeEscalation must be false")
    if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
        report.error(where, "capabilities must drop ALL")
    seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        report.error(where, f"seccomp profile must be RuntimeDefault, not {seccomp}")
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    if sc.get("readOnlyRootFilesystem") and not {env.get("ROUTER_DATA_DIR"), "/tmp"} <= mounts:
        report.error(where, "read-only root filesystem without volumes at the data dir and /tmp")
    if not (container.get("resources") or {}).get("requests"):
        report.error(where, "no resource requests")

    # Shutdown: preStop sleep + uvicorn's graceful shutdown + the outbox drain fit the grace period.
    pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
    sleep = 0.0
    if "exec" in pre_stop:
        sleep = float(pre_stop["exec"]["command"][-1])
    elif "sleep" in pre_stop:
        sleep = float(pre_stop["sleep"]["seconds"])
    else:
        report.error(where, "no preStop hook: endpoints would not drain before SIGTERM")
    drain = float(env.get("ROUTER_OUTBOX_DRAIN_SECONDS", "10"))
    grace = float(pod.get("terminationGracePeriodSeconds", 30))
    if grace < sleep + facts.uvicorn_graceful + drain:
        report.error(
            where,
            f"terminationGracePeriodSeconds {grace:g} < preStop {sleep:g}"
            f" + uvicorn {facts.uvicorn_graceful} + drain {drain:g}",
        )

    # Every ROUTER_* variable (and aliased one, like OTEL_EXPORTER_OTLP_ENDPOINT) is a real setting.
    names = set(env) | {e["name"] for e in container.get("env", [])}
    for name in sorted(n for n in names if n.startswith("ROUTER_")):
        if name not in facts.settings_env:
            report.error(where, f"{name} is not a setting in src/router_impl/settings.py")
    leaked = SECRET_ENV & set(env)
    if "ROUTER_REDIS_URL" in leaked and "@" not in env["ROUTER_REDIS_URL"]:
        leaked.discard("ROUTER_REDIS_URL")  # a URL without credentials is not a secret
    if leaked:
        report.error(where, f"secret settings in a ConfigMap: {sorted(leaked)}")
    if "ROUTER_ETCD_ENDPOINTS" in env and "ROUTER_CONFIG_PATH" in env:
        report.error(where, "both etcd and a config file configured")

    # The data volume holds the outbox at its cap with 10 % to spare.
    volume = next(v for v in pod["volumes"] if v["name"] == "data")
    if "emptyDir" in volume:
        size = volume["emptyDir"].get("sizeLimit")
    elif "ephemeral" in volume:
        size = volume["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"]
    else:
        size = rendered.merged["dataVolume"]["persistentVolumeClaim"]["size"]
    cap = int(env.get("ROUTER_OUTBOX_MAX_BYTES", str(64 * 2**30)))
    if size is None or quantity_bytes(size) < 1.1 * cap:
        report.error(where, f"data volume {size} is smaller than 1.1 x ROUTER_OUTBOX_MAX_BYTES ({cap})")
    if secret_env - SECRET_ENV - {e["name"] for e in rendered.merged.get("extraEnv", [])}:
        report.error(where, f"unexpected secret env: {sorted(secret_env - SECRET_ENV)}")


def check_alerts(rendered: Rendered, facts: Facts, report: Report) -> None:
    where = rendered.name
    rule = rendered.one("PrometheusRule")
    if rule is None:
        return
    settings = rendered.merged["metrics"]["prometheusRule"]
    enabled = {name for name, alert in settings["alerts"].items() if alert.get("enabled")}
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    names = [r["alert"] for r in rules]
    if sorted(names) != sorted(enabled) or not set(names) <= EXPECTED_ALERTS:
        report.error(
            where, f"alerts {sorted(names)} != the enabled alerts of docs/metrics.md {sorted(enabled)}"
        )
    for r in rules:
        label = f"alert {r['alert']}"
        url = (r.get("annotations") or {}).get("runbook_url", "")
        anchor = url.partition("#")[2]
        if facts.runbooks is not None and anchor not in facts.runbooks:
            report.error(where, f"{label}: docs/runbooks.md has no section #{anchor}")
        if not url.startswith(("https://", "http://")) or anchor not in RUNBOOK_ANCHORS:
            report.error(
                where,
                f"{label}: runbook_url {url!r} must link one of the docs/runbooks.md sections"
                f" {sorted(RUNBOOK_ANCHORS)}",
            )
        for key in ("summary", "description"):
            if not (r.get("annotations") or {}).get(key):
                report.error(where, f"{label}: no {key} annotation")
        if not (r.get("labels") or {}).get("severity") or not r.get("for"):
            report.error(where, f"{label}: needs a severity label and a for duration")
        expr = r["expr"]
        if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}") or expr.count('"') % 2:
            report.error(where, f"{label}: unbalanced expression {expr!r}")
        metrics = {
            re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\b(router_[a-z0-9_]+)\b", expr)
        }
        if not metrics:
            report.error(where, f"{label}: names no router metric")
        if facts.metrics is not None and metrics - facts.metrics:
            report.error(where, f"{label}: {sorted(metrics - facts.metrics)} not in docs/metrics.md")


def check_production(rendered: Rendered, report: Report) -> None:
    where = rendered.name
    deployment, hpa, pdb = (
        rendered.one("Deployment"),
        rendered.one("HorizontalPodAutoscaler"),
        rendered.one("PodDisruptionBudget"),
    )
    if hpa is None or hpa["spec"]["minReplicas"] < 3:
        report.error(where, "production needs an HPA with minReplicas >= 3")
    if deployment is not None and "replicas" in deployment["spec"]:
        report.error(where, "with the HPA on, the Deployment must not set replicas")
    if rendered.merged["replicaCount"] < 3:
        report.error(where, "production needs replicaCount >= 3")
    if pdb is None or "minAvailable" not in pdb["spec"]:
        report.error(where, "production needs a PodDisruptionBudget with minAvailable")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        if rendered.one(kind) is None:
            report.error(where, f"production needs a {kind}")
    if deployment is not None:
        resources = _container(deployment).get("resources") or {}
        if not {"cpu", "memory"} <= set(resources.get("requests", {})) or "memory" not in resources.get(
            "limits", {}
        ):
            report.error(where, "production needs cpu/memory requests and a memory limit")
    env_cm = next(d for d in rendered.of_kind("ConfigMap") if d["metadata"]["name"].endswith("-env"))
    secret_env = {e["name"] for e in _container(deployment).get("env", [])} if deployment else set()
    for name in ("ROUTER_ETCD_ENDPOINTS", "ROUTER_KAFKA_BOOTSTRAP"):
        if name not in env_cm["data"]:
            report.error(where, f"production needs {name}")
    if "ROUTER_REDIS_URL" not in env_cm["data"] and "ROUTER_REDIS_URL" not in secret_env:
        report.error(where, "production needs ROUTER_REDIS_URL")
    if "ROUTER_SECRET_KEY" not in secret_env:
        report.error(where, "production needs ROUTER_SECRET_KEY from a Secret")
    if rendered.merged["router"]["demo"]:
        report.error(where, "demo mode in production")


def check_runtime_configs(configs: dict[str, str], router_python: str | None, report: Report) -> str:
    """Load each rendered runtime config with the router's own loader (router_impl.config.file_source)."""
    if not configs:
        return "no runtime config rendered"
    if not router_python or not Path(router_python).exists():
        report.error("runtime config", f"router python {router_python!r} not found (make setup)")
        return "not checked"
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for index, (name, text) in enumerate(sorted(configs.items())):
            path = Path(tmp) / f"{index}.yaml"
            path.write_text(text, encoding="utf-8")
            paths.append((name, str(path)))
        code = (
            "import json, sys\nfrom pathlib import Path\n"
            "from router_impl.config.file_source import ConfigError, load_file\n"
            "bad = []\nfor p in sys.argv[1:]:\n    try:\n        load_file(Path(p))\n"
            "    except ConfigError as exc:\n        bad.append([p, str(exc)])\n"
            "print(json.dumps(bad))\n"
        )
        result = subprocess.run(
            [router_python, "-c", code, *[p for _, p in paths]], capture_output=True, text=True, check=False
        )
        try:
            rejected = dict(json.loads(result.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            report.error(
                "runtime config",
                f"the router's loader failed: {result.stderr.strip() or result.stdout.strip()}",
            )
            return "not checked"
        for name, path in paths:
            if path in rejected:
                report.error(
                    name,
                    f"runtime config rejected by the router: {rejected[path].replace(path, 'config.yaml')}",
                )
    return f"{len(configs)} runtime configs load in the router"


# ------------------------------------------------------------------------------------------- main


@dataclass
class Facts:
    settings_env: set[str]
    uvicorn_graceful: int
    metrics: set[str] | None
    runbooks: set[str] | None


def check_values(
    chart: helm.Chart,
    name: str,
    values: dict[str, Any],
    kube_versions: list[str],
    facts: Facts,
    report: Report,
    runtime_configs: dict[str, str],
    extra: Callable[[Rendered, Report], None] | None = None,
) -> None:
    started = time.monotonic()
    before = len(report.errors)
    print(f"== {name}", flush=True)
    try:
        chart.validate_schema(values)
    except helm.HelmError as exc:
        report.error(name, f"values.schema.json: {exc}")
    lint(name, values, kube_versions, report)
    rendered = render(chart, name, values, report)
    if rendered is not None:
        validate_manifests(rendered, kube_versions, report)
        check_deployment(rendered, facts, report)
        check_alerts(rendered, facts, report)
        if extra is not None:
            extra(rendered, report)
        for cm in rendered.of_kind("ConfigMap"):
            if cm["metadata"]["name"].endswith("-runtime-config"):
                runtime_configs[name] = "".join((cm.get("data") or {}).values())
        kinds = ", ".join(sorted(f"{d['kind']}" for d in rendered.docs))
        status = "ok" if len(report.errors) == before else f"{len(report.errors) - before} errors"
        print(
            f"  {len(rendered.docs)} manifests ({kinds}); lint + k8s {', '.join(kube_versions)}: {status}"
            f" [{time.monotonic() - started:.1f}s]",
            flush=True,
        )


def check_negative(chart: helm.Chart, report: Report) -> int:
    """Each bad override must be refused where expected, for the expected reason.

    Schema violations must also be flagged by `helm lint`.
    """
    print("== bad values must fail", flush=True)
    refused = 0
    for name, values, where, needle in NEGATIVE:
        try:
            chart.validate_schema(values)
            schema_error = ""
        except helm.HelmValuesError as exc:
            schema_error = str(exc)
        if where == "schema":
            if not schema_error:
                report.error("negative", f"{name}: values.schema.json accepted {values}")
                continue
            if needle not in schema_error:
                report.error(
                    "negative", f"{name}: refused for another reason than {needle!r}: {schema_error}"
                )
                continue
            result = helm.lint(CHART, values, strict=True)
            if not any(m.get("severity", 0) >= 3 for m in result.get("messages", [])):
                report.error("negative", f"{name}: helm lint did not flag {values}")
                continue
            refused += 1
            continue
        if schema_error:
            report.error(
                "negative", f"{name}: meant for a template guard, but the schema refused it: {schema_error}"
            )
            continue
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
        except helm.HelmRenderError as exc:
            if needle in str(exc):
                refused += 1
            else:
                report.error("negative", f"{name}: failed for another reason than {needle!r}: {exc}")
        else:
            report.error("negative", f"{name}: rendered although it must fail: {values}")
    print(f"  {refused}/{len(NEGATIVE)} refused for the expected reason", flush=True)
    return refused


def main(argv: list[str] | None = None) -> int:
    global CHART  # one chart per run (--chart)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router-python", help="python of the router's venv, to load the runtime configs")
    parser.add_argument(
        "--kube-version", action="append", help=f"Kubernetes versions (default {MIN_KUBE} and the newest)"
    )
    parser.add_argument(
        "--chart", type=Path, default=CHART, help="chart directory (default: helm/api-router)"
    )
    args = parser.parse_args(argv)
    CHART = args.chart.resolve()

    started = time.monotonic()
    helm.disable_logging()
    report = Report()
    kube_versions = args.kube_version or [MIN_KUBE, kubernetes_validate.latest_version()]
    facts = Facts(
        settings_env_names(), uvicorn_graceful_seconds(report), exported_metrics(), runbook_sections()
    )
    print(
        f"helm-check: Helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), "
        f"kubernetes-validate {kubernetes_validate.__version__}, Kubernetes {', '.join(kube_versions)}"
    )
    if facts.metrics is None:
        print("  note: docs/metrics.md is absent, alert metric names are not cross-checked")
    if facts.runbooks is None:
        print("  note: docs/runbooks.md is absent, runbook anchors are not cross-checked")
    print(
        "  note: ServiceMonitor/PrometheusRule are CRDs kubernetes-validate has no schema for: they are"
        " checked against the subset of the Prometheus operator's CRD schema the chart uses"
    )

    runtime_configs: dict[str, str] = {}
    with helm.Chart.load(CHART) as chart:
        for file in VALUES_FILES:
            values = (
                helm.values_from_yaml((CHART / file).read_text(encoding="utf-8"))
                if file != "values.yaml"
                else {}
            )
            extra = check_production if file == "values-production.yaml" else None
            check_values(chart, file, values, kube_versions, facts, report, runtime_configs, extra)
        for name, values, oldest in VARIANTS:
            versions = [
                v
                for v in kube_versions
                if tuple(map(int, v.split("."))) >= tuple(map(int, oldest.split(".")))
            ]
            check_values(chart, f"variant: {name}", values, versions, facts, report, runtime_configs)
        check_negative(chart, report)

    print("== runtime configs", flush=True)
    print(f"  {check_runtime_configs(runtime_configs, args.router_python, report)}", flush=True)

    elapsed = time.monotonic() - started
    if report.errors:
        print(f"\nhelm-check FAILED with {len(report.errors)} errors in {elapsed:.1f}s:", file=sys.stderr)
        for error in report.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    print(f"\nhelm-check passed in {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
