"""US-1 as a newcomer lives it: `make run`, the README and banner examples, then the openai client.

The router is started with exactly the command `make run` runs (read from `make -n run`), so the
test follows the Makefile rather than a copy of it.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
from aiohttp import web

from tests.e2e.conftest import MODEL
from tests.harness.backend import BackendControls, MockBackend
from tests.harness.router_proc import RouterFleet, RouterProcess
from tests.harness.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DEMO_KEY = "rk-demo-key"
BANNER = "router demo mode"
DEMO_ADMIN_KEY = "rk-demo-admin-key"
README_ADDRESS = re.compile(r"(?:localhost|127\.0\.0\.1):8080")


def make_run_command(port: int) -> list[str]:
    """The `router serve` line `make run` would execute on this port (make -n only prints it)."""
    printed = subprocess.run(
        ["make", "-n", "-s", "run", f"PORT={port}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    lines = [line for line in printed.splitlines() if " serve " in line and "router" in line]
    assert len(lines) == 1, f"`make -n run` shows no single router command:\n{printed}"
    command = shlex.split(lines[0])
    program = Path(command[0])
    command[0] = str(program if program.is_absolute() else REPO / program)
    return command


class MakeRunRouter(RouterProcess):
    """The router exactly as `make run` starts it (its data dir kept out of the work tree)."""

    def command(self) -> list[str]:
        return make_run_command(self.port)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    router = MakeRunRouter(workdir=tmp_path_factory.mktemp("make-run"))
    try:
        router.start()
        # The banner comes from a thread that polls the health check every 0.2 s: it follows the
        # first healthy answer, it is not there with it (a test-date run read the log in between).
        wait_until(lambda: BANNER in router.log_text(), timeout=30, what="the demo banner in the log")
        yield router
    finally:
        router.close()


@pytest.fixture(scope="module")
def demo_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterFleet]:
    fleet = RouterFleet(tmp_path_factory.mktemp("demo-routers"))
    yield fleet
    fleet.close()


def run_shell_example(line: str, router: RouterProcess) -> subprocess.CompletedProcess[str]:
    """Runs one documented command line as written, only pointed at this router's port."""
    command = shlex.split(README_ADDRESS.sub(f"127.0.0.1:{router.port}", line), comments=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=10, env={"PATH": "/usr/bin:/bin"})


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_make_run_is_the_demo_router(demo):
    command = make_run_command(demo.port)

    assert command[1:3] == ["serve", "--demo"]
    assert BANNER in demo.log_text()


def test_the_banners_curl_example_returns_a_completion_verbatim(demo):
    tries = [line for line in demo.log_text().splitlines() if line.strip().startswith("try: curl")]
    assert tries, "the demo banner shows no example"

    done = run_shell_example(tries[-1].strip().removeprefix("try: "), demo)

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "hello"
    assert answer["usage"]["total_tokens"] > 0


def test_every_curl_example_in_the_readme_works_against_the_demo(demo):
    lines = [
        line.strip()
        for block in readme_blocks("sh") + readme_blocks("bash")
        for line in block.splitlines()
        if line.strip().startswith("curl ")
    ]
    assert lines, "the README shows no curl example"

    for line in lines:
        done = run_shell_example(line, demo)
        assert done.returncode == 0, f"{line}: {done.stderr}"
        answer = json.loads(done.stdout)
        assert "error" not in answer, f"{line}: {answer}"
        if "/v1/status/" in line:
            assert answer["status"] == "healthy", f"{line}: {answer}"


def test_the_readme_shows_the_openai_client_working_against_the_demo(demo):
    examples = [block for block in readme_blocks("python") if "openai" in block]
    assert examples, "the README has no openai client example"
    assert DEMO_KEY in README.read_text(encoding="utf-8")

    for example in examples:
        code = README_ADDRESS.sub(f"127.0.0.1:{demo.port}", example)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr


def test_the_openai_client_gets_completions_from_the_demo(demo, clients):
    client = clients.openai(demo, DEMO_KEY)

    completion = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hello demo world"}]
    )
    streamed = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "stream it to me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    legacy = client.completions.create(model="demo", prompt="legacy text works")

    assert completion.choices[0].message.content == "hello demo world"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "stream it to me"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert legacy.choices[0].text == "legacy text works"
    assert [m.id for m in client.models.list().data] == ["demo"]


def test_the_demo_admin_key_cannot_run_inference(demo, clients):
    with pytest.raises(openai.PermissionDeniedError) as caught:
        clients.openai(demo, DEMO_ADMIN_KEY).chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}]
        )

    assert caught.value.code == "FORBIDDEN"


def test_the_demo_can_point_at_another_upstream(
    demo_fleet: RouterFleet, clients, start_mock: Callable[[], MockBackend]
):
    upstream = start_mock()
    router = demo_fleet.start(env={"ROUTER_DEMO_UPSTREAM": upstream.base_url}, args=("--demo",))

    completion = clients.openai(router, DEMO_KEY).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "served elsewhere"}]
    )

    assert completion.choices[0].message.content == "served elsewhere"
    assert upstream.inference_requests == 1
    assert upstream.last_request is not None and upstream.last_request.body["model"] == "demo"


class VllmLikeBackend(MockBackend):
    """Refuses model names it does not serve, as vLLM does (404, its error shape)."""

    async def _fault(self, request: web.Request, controls: BackendControls) -> web.StreamResponse | None:
        body = await request.json()
        if body.get("model") not in self.models:
            message = f"The model `{body.get('model')}` does not exist."
            return web.json_response(
                {"object": "error", "message": message, "type": "NotFoundError", "code": 404}, status=404
            )
        return await super()._fault(request, controls)


def test_the_demo_serves_a_real_upstream_under_the_upstream_model_name(demo_fleet: RouterFleet, clients):
    """Issue 17.6: clients ask for "demo"; the upstream is asked for the model it serves."""
    served = "Qwen/Qwen2.5-0.5B-Instruct"
    with VllmLikeBackend(models=(served,)) as upstream:
        unnamed = demo_fleet.start(env={"ROUTER_DEMO_UPSTREAM": upstream.base_url}, args=("--demo",))
        with pytest.raises(openai.BadRequestError):  # what a bare ROUTER_DEMO_UPSTREAM got before
            clients.openai(unnamed, DEMO_KEY).chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "refused"}]
            )
        env = {"ROUTER_DEMO_UPSTREAM": upstream.base_url, "ROUTER_DEMO_UPSTREAM_MODEL": served}
        router = demo_fleet.start(env=env, args=("--demo",))
        client = clients.openai(router, DEMO_KEY)

        completion = client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "served by its own name"}]
        )
        assert completion.choices[0].message.content == "served by its own name"
        assert upstream.last_request is not None and upstream.last_request.body["model"] == served
        streamed = client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "streamed too"}], stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        assert upstream.last_request.body["model"] == served
        assert [m.id for m in client.models.list()] == ["demo"]


@pytest.fixture
def start_mock() -> Iterator[Callable[[], MockBackend]]:
    started: list[MockBackend] = []

    def start() -> MockBackend:
        backend = MockBackend(models=("demo", MODEL)).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()
