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


@contextmanager
def proxy_to(hub_url: str, before=None, stall: str | None = None):
    """A proxy on 127.0.0.1 in front of the hub: `before(path)` runs before each request is passed
    on; the body of a GET whose path ends with `stall` stops halfway, the connection left open
    until the proxy closes. Yields its URL."""
    released = threading.Event()

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            if before is not None:
                before(self.path)
            connection = http.client.HTTPConnection(hub_url.removeprefix("http://"), timeout=30)
            connection.request(self.command, self.path, headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
            response = connection.getresponse()
            body = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.end_headers()
            if self.command != "GET":
                return
            if stall is not None and self.path.endswith(stall) and response.status == 200:
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                released.wait(60)
                self.close_connection = True
                return
            self.wfile.write(body)

        do_HEAD = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        released.set()
        server.shutdown()
        server.server_close()


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


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_an_interrupted_pull_leaves_no_part_of_a_file_in_the_cache(hub, tmp_path):
    """Ctrl-C stopped a pull at once, but its download thread ended with the process before
    huggingface_hub's cleanup: the part of the file it was downloading stayed in the Hugging Face
    cache for good (BLOB.RANDOM.incomplete, gigabytes for a large model), where an interrupted
    snapshot_download leaves none."""
    url, _ = hub
    blobs = tmp_path / "hf" / "hub" / "models--org--m" / "blobs"
    with proxy_to(url, stall="/model.safetensors") as proxy:
        pulling = subprocess.Popen([sys.executable, "-m", "zoo", "pull", "org/m"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": proxy, "ZOO_HOME": str(tmp_path / "zoo")})
        try:
            deadline = time.monotonic() + 60
            while not list(blobs.glob("*.incomplete")) and time.monotonic() < deadline:  # its bytes may wait in a buffer yet
                time.sleep(0.05)
            assert list(blobs.glob("*.incomplete")), "the download never began"
            time.sleep(0.5)  # well into it: the proxy holds back the rest of the file
            pulling.send_signal(signal.SIGINT)
            _, said = pulling.communicate(timeout=15)
        finally:
            pulling.kill()
    assert pulling.returncode == 130 and said == "interrupted\n", (pulling.returncode, said)
    assert list(blobs.glob("*.incomplete")) == []


def test_hf_endpoint_with_a_trailing_slash_is_the_hub(hub, tmp_path, monkeypatch):
    """HF_ENDPOINT=http://host/ made every pull ask for //api/models/... (a 404), where
    huggingface_hub and transformers take it as http://host."""
    url, upstream = hub
    monkeypatch.setenv("HF_ENDPOINT", url + "/")
    entry, _ = pull.pull("org/m", store=Store(tmp_path / "second"), progress_bars=False)
    assert entry.commit == upstream.resolve("org/m").commit


def test_an_hf_hub_cache_with_a_tilde_and_a_variable_is_where_huggingface_hub_puts_it(hub, tmp_path):
    """huggingface_hub expands `~` and $VARS in HF_HUB_CACHE (and HF_HOME); zoo took the text as
    it was: a pull offline said the cache huggingface_hub had filled held no list of its files."""
    from huggingface_hub import snapshot_download

    url, upstream = hub
    home = tmp_path / "home"
    snapshot_download("org/m", endpoint=url, cache_dir=home / "caches" / "hub")  # as transformers fills it
    environment = {"HOME": str(home), "WHERE": "caches", "HF_HUB_CACHE": "~/$WHERE/hub", "HF_HUB_OFFLINE": "1",
                   "HF_ENDPOINT": "http://127.0.0.1:9", "ZOO_HOME": str(tmp_path / "zoo")}
    done = _zoo("pull", "org/m", env=environment)
    assert done.returncode == 0, done.stderr
    assert Store(tmp_path / "zoo").resolve("org/m").commit == upstream.resolve("org/m").commit


def test_a_revision_that_moves_during_the_pull_is_said_so(hub, tiny_model, tmp_path, monkeypatch):
    """The model stored again on the hub while a pull of it ran: the commit `main` had named was
    gone, and the pull said the hub had no revision 'main'."""
    url, upstream = hub
    (tiny_model / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 32, "edited": True}))
    stored_again = []

    def store_it_again(path):
        if "/tree/" in path and not stored_again:
            stored_again.append(compress_into(upstream, tiny_model, "org/m", force=True))

    before = upstream.resolve("org/m").commit
    with proxy_to(url, before=store_it_again) as proxy:
        monkeypatch.setenv("HF_ENDPOINT", proxy)
        with pytest.raises(pull.PullError) as raised:
            pull.pull("org/m", store=Store(tmp_path / "second"), progress_bars=False)
    assert stored_again and stored_again[0].commit != before
    assert str(raised.value) == (f"cannot pull org/m@main: revision 'main' of org/m moved to a new commit on the hub at {proxy} during "
                                 f"the pull (the one it named, {before[:12]}, is gone there): pull again to fetch it")


def test_a_revision_with_a_slash_is_a_hub_id_for_compress(hub, tiny_model, tmp_path):
    """`zoo compress ORG/NAME@REVISION` took a revision holding a `/` (refs/pr/1, feature/x) for a
    local path: "no such file or folder", where `zoo pull` takes it."""
    from zoo.refs import looks_like_path

    assert not looks_like_path("org/m@refs/pr/1") and not looks_like_path("org/m1@feature/x")
    assert looks_like_path("org/m/x") and looks_like_path("a/b/c@v1")
    url, upstream = hub
    compress_into(upstream, tiny_model, "org/m", "feature/x")
    done = _zoo("compress", "org/m@feature/x", env={"HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "ZOO_HOME": str(tmp_path / "zoo")})
    assert done.returncode == 0, done.stderr
    assert [e.revision for e in Store(tmp_path / "zoo").entries()] == ["feature/x"]


def test_a_model_held_only_lossy_is_said_in_one_sentence(tiny_model, tmp_path):
    """The 404 for a model whose main is held only as lossy variants said it twice ("... holds main
    only as lossy variants; it holds only lossy variants there: ask for ..."), and one with no main
    at all was said to hold main so."""
    store = Store(tmp_path / "zoo")
    at_main = compress_into(store, tiny_model, "lonly", pipeline="truncate:bits=4")
    elsewhere = compress_into(store, tiny_model, "lv1", "v1", pipeline="truncate:bits=4")
    with running_server(store) as url:
        for repo, said in (("lonly", f"'lonly' holds main only as lossy variants: ask for revision 'main:{at_main.variant}'"),
                           ("lv1", f"'lv1' holds only lossy variants: ask for revision 'v1:{elsewhere.variant}'")):
            status, _, body = request(url, f"/api/models/{repo}")
            assert status == 404 and said in body.decode() and body.decode().count("lossy") == 1, body
