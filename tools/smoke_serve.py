#!/usr/bin/env python3
"""Start a router in demo mode on a free port, check GET /v1/status/healthz and one chat completion, stop it.

    python tools/smoke_serve.py --router .venv-3.12/bin/router      # make smoke-pythons
    python tools/smoke_serve.py --router /tmp/img/opt/router/bin/router --data-dir /tmp/img/data

Standard library only (it runs in runtime-only venvs). Exit 1 with the router's output on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

KEY = "rk-smoke-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _call(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers if data else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def smoke(router: str, data_dir: Path, workdir: Path, timeout: float) -> str:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env |= {"ROUTER_DATA_DIR": str(data_dir), "ROUTER_DEMO_API_KEY": KEY, "ROUTER_LOG_LEVEL": "warning"}
    log = workdir / "router.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [router, "serve", "--demo", "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the router exited with {proc.returncode}")
                try:
                    status, health = _call(f"{base}/v1/status/healthz")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no answer on {base} within {timeout:.0f} s") from None
                    time.sleep(0.2)
            if status != 200:
                raise RuntimeError(f"healthz answered {status}: {health}")
            chat = {"model": "demo", "messages": [{"role": "user", "content": "smoke"}]}
            status, reply = _call(f"{base}/v1/chat/completions", chat)
            if status != 200 or not reply["choices"][0]["message"]["content"]:
                raise RuntimeError(f"chat completion answered {status}: {reply}")
            return f"healthz {health['status']}, chat completion {reply['usage']['total_tokens']} tokens"
        except Exception:
            proc.terminate()
            proc.wait(10)
            sys.stderr.write(log.read_text(errors="replace")[-4000:])
            raise
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", required=True, help="the router executable")
    parser.add_argument("--data-dir", type=Path, help="ROUTER_DATA_DIR (default: a temporary directory)")
    parser.add_argument("--timeout", type=float, default=45.0, help="seconds to wait for health")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="router-smoke-") as temp:
        workdir = Path(temp)
        try:
            result = smoke(args.router, args.data_dir or workdir / "data", workdir, args.timeout)
        except Exception as exc:
            print(f"smoke: FAILED: {exc}", file=sys.stderr)
            return 1
    print(f"smoke: ok ({result})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
