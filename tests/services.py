"""The real services the cloud tests need, started once per test session and always stopped: an
S3-compatible server (moto's, on 127.0.0.1) and a Ray cluster of a head and one joined worker node.
Neither is mocked: the tests talk HTTP to the one and submit tasks to the other.

Loaded by tests/conftest.py as a plugin, so that one instance serves every test module."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# moto's own `moto_server` serves requests on threads, and its S3 checks a condition (If-None-Match,
# If-Match) and then writes, without a lock: two conditional puts at once could both pass. Served one
# request at a time, each is atomic, as S3 itself guarantees.
MOTO_SERIAL = """
import sys
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)
"""

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it listened on {port}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {seconds} s")


def _stop(process: subprocess.Popen, seconds: float = 20) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1; yields the environment a client needs to reach it."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    port = free_port()
    log = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, "-c", MOTO_SERIAL, str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process, 60, "the moto server")
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", **S3_CREDENTIALS}
    finally:
        _stop(process)
        log.close()


@pytest.fixture
def bucket(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket on the session's S3 server, with this test's environment pointing at it.
    Returns its URL."""
    import s3fs

    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    name = f"zoo-test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["AWS_ENDPOINT_URL"]}, skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"


def _ray_command() -> list[str]:
    return [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"]


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_cluster(s3_server: dict[str, str]) -> Iterator[str]:
    """A Ray head and a second worker node joined to it, one CPU each (the CI machine has two), on
    127.0.0.1 without a dashboard; yields the head's address. Each node runs under `ray start
    --block`, whose end stops that node's processes and only those (`ray stop` would stop every Ray
    on the machine, other people's included). The nodes import zoo from this checkout and reach the
    session's S3 server, as a cluster's nodes would hold their own credentials."""
    # Ray 2.5x starts clusters with token authentication; a driver sends the token only when told
    # to, before ray is imported. The tests' drivers (this process, the CLI's subprocesses) are, and
    # the nodes and drivers share a token of the session's own: `ray start` does not make one, and
    # on a fresh machine there is no ~/.ray/auth_token to fall back on (the head exited at once).
    if importlib.util.find_spec("ray") is None:  # looked for, not imported: the mode must come first
        pytest.skip("ray is not installed")
    previous = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    port = free_port()
    # a short private folder: Ray's socket paths must stay under the 107 characters Unix allows
    temporary = Path(tempfile.mkdtemp(prefix="zoo-ray-", dir="/tmp"))
    environment = {**os.environ, **s3_server, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    environment.pop("RAY_ADDRESS", None)
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats", "--block"]
    log = tempfile.TemporaryFile()
    head = subprocess.Popen([*_ray_command(), "start", "--head", f"--port={port}", "--include-dashboard=false",
                             f"--temp-dir={temporary}", "--object-store-memory=100000000", *common],
                            env=environment, stdout=log, stderr=subprocess.STDOUT)
    nodes = [head]
    try:
        _wait_for_port(port, head, 120, "the Ray head")
        address = f"127.0.0.1:{port}"
        worker = subprocess.Popen([*_ray_command(), "start", f"--address={address}", "--object-store-memory=100000000", *common],
                                  env=environment, stdout=log, stderr=subprocess.STDOUT)
        nodes.append(worker)
        _wait_for_nodes(address, 2, 120, nodes, log)
        yield address
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for node in reversed(nodes):
            _stop(node, 60)
        log.close()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(temporary, ignore_errors=True)


def _wait_for_nodes(address: str, count: int, seconds: float, nodes: list[subprocess.Popen], log) -> None:  # noqa: ANN001
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    deadline = time.monotonic() + seconds
    while sum(node["Alive"] for node in ray.nodes()) < count:
        if time.monotonic() > deadline or any(node.poll() is not None for node in nodes):
            log.seek(0)
            raise RuntimeError(f"the Ray cluster did not reach {count} nodes:\n{log.read().decode(errors='replace')[-4000:]}")
        time.sleep(0.2)
