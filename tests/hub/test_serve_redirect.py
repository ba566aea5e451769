"""A file asked for by a branch or a variant is a relative redirect to its commit's URL, as on the
Hub: the download, and any resumption of it, reads one stored version, never the next one's bytes
after its own (huggingface_hub resumes a cut download with a bare Range on the URL it downloaded
from)."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from zoo.api import compress_into
from zoo.errors import ZooError
from zoo.hub.serve import make_server
from zoo.hub.store import Store

from tests.conftest import random_storage, write_safetensors
from tests.hub.test_serve import request, running_server


def test_a_branch_or_variant_file_redirects_to_its_commit_with_the_headers_huggingface_hub_reads(tiny_model, tmp_path):
    store = Store(tmp_path / "zoo")
    lossless = compress_into(store, tiny_model, "org/tiny")
    lossy = compress_into(store, tiny_model, "org/tiny", pipeline="truncate:bits=4")
    weights = (tiny_model / "model.safetensors").read_bytes()
    with running_server(store) as url:
        for method in ("HEAD", "GET"):
            status, headers, body = request(url, "/org/tiny/resolve/main/model.safetensors", method, follow=False)
            assert status == 307 and body == b""
            assert headers["location"] == f"/org/tiny/resolve/{lossless.commit}/model.safetensors"
            assert headers["x-repo-commit"] == lossless.commit and headers["x-linked-size"] == str(len(weights))
        status, headers, _ = request(url, f"/org/tiny/resolve/{lossless.commit}/model.safetensors", "HEAD", follow=False)
        assert status == 200 and headers["content-length"] == str(len(weights)) and headers["x-repo-commit"] == lossless.commit
        # A variant has a commit of its own: the redirect lands on exactly the variant resolved.
        quoted = f"main%3A{lossy.variant.replace('|', '%7C').replace(':', '%3A').replace('=', '%3D')}"
        status, headers, _ = request(url, f"/org/tiny/resolve/{quoted}/model.safetensors", follow=False)
        assert status == 307 and headers["location"] == f"/org/tiny/resolve/{lossy.commit}/model.safetensors"
        # A file name is quoted in the Location, and read back as the same name.
        status, headers, body = request(url, "/org/tiny/resolve/main/sub/notes.txt")
        assert status == 200 and body == (tiny_model / "sub" / "notes.txt").read_bytes()


def test_a_download_resumed_after_the_model_is_stored_anew_never_gets_the_new_bytes(tiny_model, tmp_path):
    """The hunter's case, made deterministic: the client resolves `main` (HEAD), the model is
    stored again with other weights, and the client resumes with `Range: bytes=N-` on the URL its
    HEAD ended at. It was the branch's URL, answered 206 from the new version: a file of old
    bytes then new ones, cached under the old sha256. Now it is the old commit's URL: 404."""
    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "org/tiny")
    first = (tiny_model / "model.safetensors").read_bytes()
    second_folder = tmp_path / "second"
    shutil.copytree(tiny_model, second_folder)
    write_safetensors(second_folder / "model.safetensors", {"embed.weight": ("BF16", random_storage("BF16", (64, 32), 9))})
    second = (second_folder / "model.safetensors").read_bytes()
    with running_server(store) as url:
        status, headers, _ = request(url, "/org/tiny/resolve/main/model.safetensors", "HEAD", follow=False)
        # where huggingface_hub downloads from: the redirect's target, else the URL itself
        download_from = headers.get("location", "/org/tiny/resolve/main/model.safetensors")
        status, _, body = request(url, download_from, headers={"Range": "bytes=100-"})
        assert status == 206 and body == first[100:]
        compress_into(store, second_folder, "org/tiny", force=True)
        status, headers, body = request(url, download_from, headers={"Range": "bytes=100-"})
        assert body != second[100:]
        assert status == 404 and headers["x-error-code"] == "RevisionNotFound"
        # a new download resolves `main` afresh and gets the new version whole
        assert request(url, "/org/tiny/resolve/main/model.safetensors")[2] == second


def test_hf_hub_download_and_snapshot_download_follow_the_redirect(tiny_model, tmp_path):
    from huggingface_hub import hf_hub_download, snapshot_download

    store = Store(tmp_path / "zoo")
    entry = compress_into(store, tiny_model, "org/tiny")
    with running_server(store) as url:
        path = Path(hf_hub_download("org/tiny", "model.safetensors", endpoint=url, cache_dir=tmp_path / "hf"))
        assert path.read_bytes() == (tiny_model / "model.safetensors").read_bytes()
        assert path.parent.name == entry.commit  # cached under the commit the redirect named
        snapshot = Path(snapshot_download("org/tiny", endpoint=url, cache_dir=tmp_path / "hf2"))
        assert (snapshot / "sub" / "notes.txt").read_bytes() == (tiny_model / "sub" / "notes.txt").read_bytes()


@contextmanager
def stripping_proxy(upstream: str, prefix: str):
    """A reverse proxy on 127.0.0.1 as nginx's `location /zoo/ { proxy_pass UPSTREAM/; }` is: a path
    under `prefix` goes upstream without it, any other path is 404; answers, redirects among them,
    come back as they are. Yields its URL."""
    host, port = upstream.removeprefix("http://").split(":")

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            if not self.path.startswith(prefix + "/"):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                connection.putrequest(self.command, self.path[len(prefix):], skip_host=True, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    connection.putheader(key, value)
                connection.endheaders()
                response = connection.getresponse()
                body = response.read()
            finally:
                connection.close()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "date", "server"):
                    self.send_header(key, value)
            if response.getheader("Content-Length") is None:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(10)


def test_behind_a_proxy_that_strips_a_prefix_the_redirect_keeps_the_prefix(tiny_model, tmp_path):
    """The redirect's path began at the host's root: behind `location /zoo/`, huggingface_hub
    followed it out of the proxy's prefix, to a 404. `--root-path /zoo` puts the prefix back."""
    from huggingface_hub import hf_hub_download

    store = Store(tmp_path / "zoo")
    entry = compress_into(store, tiny_model, "org/tiny")
    with running_server(store, root_path="/zoo/") as url, stripping_proxy(url, "/zoo") as proxy:
        status, headers, _ = request(proxy, "/zoo/org/tiny/resolve/main/model.safetensors", "HEAD", follow=False)
        assert status == 307 and headers["location"] == f"/zoo/org/tiny/resolve/{entry.commit}/model.safetensors"
        path = Path(hf_hub_download("org/tiny", "model.safetensors", endpoint=f"{proxy}/zoo", cache_dir=tmp_path / "hf"))
        assert path.read_bytes() == (tiny_model / "model.safetensors").read_bytes()
        assert path.parent.name == entry.commit


@pytest.mark.parametrize("root_path", ["zoo", "/a b", "/zoo?x=1"])
def test_a_root_path_that_is_no_url_path_is_refused_in_one_line(tmp_path, root_path):
    with pytest.raises(ZooError, match="is not a URL path"):
        make_server(Store(tmp_path / "zoo"), root_path=root_path)
    done = subprocess.run([sys.executable, "-m", "zoo", "serve", "--port", "0", "--root-path", root_path], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "ZOO_HOME": str(tmp_path / "home")})
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "is not a URL path" in done.stderr, done.stderr
