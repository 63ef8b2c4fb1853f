"""What the benchmark measures: the fake upstream direct, the thin proxy, the router (variants), LiteLLM."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from procs import ServerProcess, free_port, post_json, wait_listening
from upstream import DEFAULT_STREAM_CHUNKS

HOST = "127.0.0.1"  # loopback only, for every server and every client
BENCH_KEY = "sk-bench-master"
CHAT_PATH = "/v1/chat/completions"
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass(frozen=True)
class RouterVariant:
    description: str
    env: Mapping[str, str] = field(default_factory=dict)
    # Taken from the caller's environment, else from `make dev-up`'s .dev-services/state.json.
    from_caller: tuple[str, ...] = ()
    # Tracing on (sampled as ROUTER_TRACING_SAMPLE_RATIO, 0.1 by default), exported over OTLP to
    # the fake upstream, which accepts and drops the spans.
    tracing: bool = False


ROUTER_VARIANTS: dict[str, RouterVariant] = {
    "embedded": RouterVariant("defaults: one process, embedded adapters, no external services"),
    "embedded-machine": RouterVariant(
        "embedded, the outbox fsynced per group commit (ROUTER_OUTBOX_DURABILITY=machine)",
        env={"ROUTER_OUTBOX_DURABILITY": "machine"},
    ),
    "redis": RouterVariant("limits and idempotency in Redis", from_caller=("ROUTER_REDIS_URL",)),
    "embedded-limits": RouterVariant(
        "embedded, with rate limits and budgets on (bench/limits.yaml): every request checked and settled",
        env={"ROUTER_CONFIG_PATH": str(HERE / "limits.yaml")},
    ),
    "redis-limits": RouterVariant(
        "Redis, with rate limits and budgets on (bench/limits.yaml): one Lua call to admit, one to settle",
        env={"ROUTER_CONFIG_PATH": str(HERE / "limits.yaml")},
        from_caller=("ROUTER_REDIS_URL",),
    ),
    "full": RouterVariant(
        "the full shared pipeline: Redis limits + budgets + audit index, outbox -> Kafka, "
        "metrics, tracing sampled at 10 % to an OTLP sink",
        env={"ROUTER_CONFIG_PATH": str(HERE / "limits.yaml")},
        from_caller=("ROUTER_REDIS_URL", "ROUTER_KAFKA_BOOTSTRAP"),
        tracing=True,
    ),
    "full-untraced": RouterVariant(
        "full with tracing off (beside full: what tracing sampled at 10 % costs)",
        env={"ROUTER_CONFIG_PATH": str(HERE / "limits.yaml")},
        from_caller=("ROUTER_REDIS_URL", "ROUTER_KAFKA_BOOTSTRAP"),
    ),
    "shared": RouterVariant(
        "Redis + etcd + Kafka (many-replica deployment)",
        from_caller=("ROUTER_REDIS_URL", "ROUTER_ETCD_ENDPOINTS", "ROUTER_KAFKA_BOOTSTRAP"),
    ),
}


@dataclass
class Target:
    name: str
    port: int
    model: str
    process: ServerProcess
    ready_path: str
    ready_timeout_s: float
    env: dict[str, str] = field(default_factory=dict)  # what was set for it, for the record
    error: str | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def failed(self) -> bool:
        return self.error is not None

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = {"name": self.name, "url": self.url, "model": self.model}
        described |= {"env": self.env, "error": self.error}
        if self.failed:
            described["log_tail"] = self.process.log_tail()
        return described

    def fail(self, reason: str) -> None:
        self.error = reason
        self.process.stop()

    def wait_ready(self, stream: bool) -> None:
        """Wait until it listens, then one real chat completion must succeed; else mark it failed."""
        problem = wait_listening(self.process, HOST, self.port, self.ready_path, self.ready_timeout_s)
        if problem is None:
            problem = self._probe(stream)
        if problem is not None:
            self.fail(problem)

    def _probe(self, stream: bool) -> str | None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 16,
        }
        if stream:
            body["stream"] = True
        try:
            status, content_type, data = post_json(
                HOST,
                self.port,
                CHAT_PATH,
                json.dumps(body).encode(),
                {"Authorization": f"Bearer {BENCH_KEY}"},
            )
        except (OSError, http.client.HTTPException) as exc:
            return f"probe POST {CHAT_PATH} failed: {exc!r}"
        sample = data[:400].decode(errors="replace")
        if status != 200:
            return f"probe POST {CHAT_PATH} -> {status}: {sample}"
        looks_right = b"data:" in data if stream else b'"choices"' in data
        if not looks_right:
            return f"probe POST {CHAT_PATH} -> 200 but not a chat completion ({content_type}): {sample}"
        return None


def _pinned(command: list[str], cpus: str | None) -> list[str]:
    return command if cpus is None else ["taskset", "-c", cpus, *command]


def start_upstream(
    python: str,
    logs: Path,
    cpus: str | None,
    delay_ms: float,
    stream_chunks: int = DEFAULT_STREAM_CHUNKS,
    stream_gap_ms: float = 0.0,
) -> Target:
    port = free_port()
    command = [python, str(HERE / "upstream.py"), "--host", HOST, "--port", str(port)]
    if delay_ms:
        command += ["--delay-ms", str(delay_ms)]
    command += ["--stream-chunks", str(stream_chunks), "--stream-gap-ms", str(stream_gap_ms)]
    process = ServerProcess("upstream", _pinned(command, cpus), logs / "upstream.log")
    process.start()
    return Target("direct", port, "fake", process, "/v1/models", 15.0)


def start_thin_proxy(python: str, logs: Path, cpus: str | None, upstream: Target) -> Target:
    port = free_port()
    command = [python, str(HERE / "thin_proxy.py"), "--port", str(port)]
    command += ["--upstream", upstream.url, "--key", BENCH_KEY]
    process = ServerProcess("thin-proxy", _pinned(command, cpus), logs / "thin-proxy.log")
    process.start()
    # It only routes POST; a GET answering 405 means it listens.
    return Target("thin-proxy", port, "fake", process, CHAT_PATH, 15.0)


def _dev_services_env() -> dict[str, str]:
    try:
        state = json.loads((REPO / ".dev-services" / "state.json").read_text())
        return {str(k): str(v) for k, v in state.get("env", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def router_env(
    variant_name: str, upstream: Target, data_dir: Path, overrides: Mapping[str, str]
) -> tuple[dict[str, str], str | None]:
    """(environment, problem): the caller's ROUTER_* variables never leak in unless a variant asks."""
    variant = ROUTER_VARIANTS[variant_name]
    caller = {**_dev_services_env(), **{k: v for k, v in os.environ.items() if k.startswith("ROUTER_")}}
    chosen = {
        "ROUTER_DEMO_UPSTREAM": upstream.url,
        "ROUTER_DEMO_API_KEY": BENCH_KEY,
        "ROUTER_DATA_DIR": str(data_dir),
        "ROUTER_ACCESS_LOG": "false",
        **variant.env,
    }
    if variant.tracing:
        chosen["ROUTER_TRACING_ENABLED"] = "true"
        chosen["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{upstream.url}/v1/traces"
    missing = [name for name in variant.from_caller if name not in caller and name not in overrides]
    chosen.update({name: caller[name] for name in variant.from_caller if name in caller})
    chosen.update(overrides)
    problem = None
    if missing:
        problem = f"variant {variant_name!r} needs {', '.join(missing)} (export them, or `make dev-up`)"
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    return {**base, **chosen}, problem


def start_router(
    router_bin: Path,
    variant_name: str,
    logs: Path,
    cpus: str | None,
    upstream: Target,
    overrides: Mapping[str, str],
    workers: int,
    source: Path | None = None,
    label: str = "",
) -> Target:
    """``source``: another checkout whose ``src`` and ``generated`` the router imports first (the
    target is then ``router:<variant>@base``), to compare two commits in one run; ``label`` names
    the executable when several run (``@py3.12``)."""
    port = free_port()
    name = f"router:{variant_name}" + ("" if source is None else "@base") + label
    data_dir = logs / f"{name.replace(':', '-')}-data"
    data_dir.mkdir(exist_ok=True)
    env, problem = router_env(variant_name, upstream, data_dir, overrides)
    if source is not None:
        first = [str(source / "src"), str(source / "generated")]
        env["PYTHONPATH"] = os.pathsep.join([*first, *filter(None, [env.get("PYTHONPATH")])])
    command = [str(router_bin), "serve", "--demo", "--host", HOST, "--port", str(port)]
    command += ["--workers", str(workers)]
    process = ServerProcess(name, _pinned(command, cpus), logs / f"{name.replace(':', '-')}.log", env, REPO)
    recorded = {k: v for k, v in env.items() if k.startswith("ROUTER_") and k != "ROUTER_DATA_DIR"}
    target = Target(name, port, "demo", process, "/v1/status/healthz", 60.0, recorded)
    if problem is not None:
        target.error = problem
    else:
        process.start()
    return target


LITELLM_CONFIG = """\
# Same as ../shared/bench/litellm_config.yaml (no DB, master key auth, no callbacks/telemetry).
model_list:
  - model_name: fake
    litellm_params:
      model: openai/fake
      api_base: {api_base}
      api_key: dummy
litellm_settings:
  telemetry: false
  callbacks: []
  success_callback: []
  failure_callback: []
  set_verbose: false
  drop_params: true
  request_timeout: 60
general_settings:
  master_key: {key}
  disable_spend_logs: true
  disable_error_logs: true
"""


def start_litellm(venv: Path, logs: Path, cpus: str | None, upstream: Target) -> Target:
    port = free_port()
    config = logs / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(api_base=f"{upstream.url}/v1", key=BENCH_KEY))
    command = [str(venv / "bin" / "litellm"), "--config", str(config), "--host", HOST, "--port", str(port)]
    command += ["--num_workers", "1"]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    process = ServerProcess("litellm", _pinned(command, cpus), logs / "litellm.log", env)
    process.start()
    return Target("litellm", port, "fake", process, "/health/liveliness", 120.0)
