"""`zoo pull` at its edges: a part of a commit, a pull cut short by a signal, the environment as
huggingface_hub reads it, a revision that moves during the pull. The hub is a real `zoo serve` on
127.0.0.1 (in a thread of the test), with a proxy in front of it where the test needs one."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.hub.test_serve import request, running_server
from zoo import batch
from zoo.api import compress_into
from zoo.hub import pull
from zoo.hub.store import Store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub(tiny_model, tmp_path, monkeypatch):
    """org/m (config.json, model.safetensors, sub/notes.txt) in a zoo served on 127.0.0.1; this
    process a client of it. Yields the URL and the upstream zoo."""
    upstream = Store(tmp_path / "upstream")
    compress_into(upstream, tiny_model, "org/m")
    with running_server(upstream) as url:
        for variable, value in {"HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
            monkeypatch.setenv(variable, value)
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        yield url, upstream


def _zoo(*args, env: dict) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "ZOO_DEBUG"}
    return subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**environment, "PYTHONPATH": str(ROOT), **env})


def test_a_pull_of_some_files_is_stored_and_served_under_a_commit_of_its_own(hub, tmp_path):
    """`zoo pull --include '*.json'` stored the config alone under the hub's commit, and `zoo
    serve` advertised that sha with one file of three: huggingface_hub keeps one list of files per
    commit, so a client of both hubs got the whole model's snapshot with one file. A part gets a
    commit derived from its files (as a lossy variant does); the hub's stays its source."""
    from huggingface_hub import snapshot_download

    url, upstream = hub
    commit = upstream.resolve("org/m").commit
    second = Store(tmp_path / "second")
    part, _ = pull.pull("org/m", store=second, include=["*.json"], progress_bars=False)
    assert [f.path for f in part.files] == ["config.json"]
    assert part.commit != commit and part.source == f"hub:org/m@{commit}"
    whole, _ = pull.pull("org/m", store=second, name="whole", progress_bars=False)
    assert whole.commit == commit  # every file: the hub's commit, as before
    every, _ = pull.pull("org/m", store=second, name="every", exclude=["*.bin"], progress_bars=False)  # globs that leave out nothing
    assert every.commit == commit
    landed = batch.pull_many(["org/m"], store=second, names=["batch-part"], include=["*.json"], ray=None)
    assert landed[0].ok, landed[0].error
    assert second.resolve("batch-part").commit not in (commit, None) and second.resolve("batch-part").source == f"hub:org/m@{commit}"

    # a client of both, with one cache: the part from the second zoo, then the model from the hub
    with running_server(second) as second_url:
        assert json.loads(request(second_url, "/api/models/org/m")[2])["sha"] == part.commit
        snapshot_download("org/m", endpoint=second_url, cache_dir=tmp_path / "client")
    got = Path(snapshot_download("org/m", endpoint=url, cache_dir=tmp_path / "client"))
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == ["config.json", "model.safetensors",
                                                                                            "sub/notes.txt"]
