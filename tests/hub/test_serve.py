"""zoo serve against real clients: http.client for the protocol's corners, huggingface_hub for
what inference scripts really call. Every server here listens on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from zoo import kernels
from zoo.hub.serve import make_server
from zoo.hub.store import Store
from zoo.api import compress_into

from tests.conftest import largest_object, random_storage, write_safetensors


@contextmanager
def running_server(store: Store, token: str | None = None, host: str = "127.0.0.1", quiet: bool = True, **options):
    """`zoo serve` in a thread of this process, on a free port; yields its URL. `options`: make_server's."""
    server = make_server(store, host, 0, token, quiet=quiet, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def request(url: str, path: str, method: str = "GET", headers: dict | None = None, follow: bool = True) -> tuple[int, dict, bytes]:
    """One request; a relative redirect (a branch's file, to its commit's URL) is followed, as
    huggingface_hub follows it, unless `follow` is false."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        # skip_host etc. are not needed; putrequest keeps the path exactly as given (no re-encoding)
        connection.putrequest(method, path)
        for key, value in (headers or {}).items():
            connection.putheader(key, value)
        connection.endheaders()
        response = connection.getresponse()
        answer = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()
    if follow and answer[0] == 307 and answer[1]["location"].startswith("/"):
        return request(url, answer[1]["location"], method, headers)
    return answer


def commit_path(url: str, path: str) -> str:
    """Where a branch's file is served from: the path of its commit's URL, for the tests that
    read a download through a connection of their own."""
    status, headers, _ = request(url, path, "HEAD", follow=False)
    assert status == 307, status
    return headers["location"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def served(tiny_model, tmp_path):
    """A store holding the tiny model (as 'org/tiny') and a second model; the server's URL."""
    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "org/tiny", chunk_bytes=1024)
    other = tmp_path / "other"
    other.mkdir()
    write_safetensors(other / "model.safetensors", {"w": ("F32", random_storage("F32", (300, 40), 7))})
    compress_into(store, other, "other")
    with running_server(store) as url:
        yield url, store, tiny_model


def test_model_info_tree_and_files(served):
    url, store, source = served
    entry = store.resolve("org/tiny", with_files=True)
    status, _, body = request(url, "/api/models/org/tiny/revision/main")
    info = json.loads(body)
    assert status == 200 and info["id"] == "org/tiny" and len(info["sha"]) == 40 and info["sha"] == entry.commit
    assert sorted(s["rfilename"] for s in info["siblings"]) == ["config.json", "model.safetensors", "sub/notes.txt"]

    status, _, body = request(url, "/api/models/org/tiny/tree/main?recursive=true")
    tree = {item["path"]: item for item in json.loads(body)}
    weights = (source / "model.safetensors").read_bytes()
    assert tree["model.safetensors"]["size"] == len(weights)
    assert tree["model.safetensors"]["lfs"]["oid"] == sha256(weights)
    assert "lfs" not in tree["config.json"]
    # a small file's oid is git's blob id of its content
    config = (source / "config.json").read_bytes()
    assert tree["config.json"]["oid"] == hashlib.sha1(b"blob %d\0" % len(config) + config).hexdigest()
    # recursively, the Hub lists each folder too, before what it holds (there were files only)
    listed = [(item["type"], item["path"]) for item in json.loads(body)]
    assert ("directory", "sub") in listed and listed.index(("directory", "sub")) < listed.index(("file", "sub/notes.txt"))
    status, _, body = request(url, "/api/models/org/tiny/tree/main")
    assert {(i["type"], i["path"]) for i in json.loads(body)} == {("file", "config.json"), ("file", "model.safetensors"), ("directory", "sub")}

    for name in ("model.safetensors", "config.json", "sub/notes.txt"):
        original = (source / name).read_bytes()
        status, headers, body = request(url, f"/org/tiny/resolve/main/{name}")
        assert status == 200 and body == original
        assert headers["etag"] == f'"{sha256(original)}"' and headers["x-repo-commit"] == entry.commit
        status, headers, body = request(url, f"/org/tiny/resolve/{entry.commit}/{name}", "HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) == len(original)
        assert not any(key.startswith("x-xet") for key in headers)  # the client must not try Xet


def test_a_repo_named_like_a_route_has_its_model_info(tiny_model, tmp_path):
    """`/api/models/x/tree` is the model info of repo x/tree, whether or not a repo x is in the zoo
    (a keyword with nothing after it is no route); it was a 404."""
    store = Store(tmp_path / "zoo")
    for name in ("x/tree", "y/revision", "x", "y"):
        compress_into(store, tiny_model, name)
    with running_server(store) as url:
        for name in ("x/tree", "y/revision"):
            status, _, body = request(url, f"/api/models/{name}")
            assert status == 200 and json.loads(body)["id"] == name, body
            status, _, body = request(url, f"/api/models/{name}/revision/main")
            assert status == 200 and json.loads(body)["id"] == name, body
        status, headers, _ = request(url, "/api/models/z/tree")
        assert status == 404 and headers.get("x-error-code") == "RepoNotFound"
        status, _, body = request(url, "/api/models/x/tree/main")  # x's tree, as before
        assert status == 200 and {item["path"] for item in json.loads(body)} >= {"config.json", "model.safetensors"}, body


@pytest.mark.parametrize("header, expected", [
    ("bytes=0-0", slice(0, 1)), ("bytes=100-1123", slice(100, 1124)), ("bytes=5000-", slice(5000, None)),
    ("bytes=-17", slice(-17, None)), ("bytes=0-99999999", slice(0, None)),
])
def test_ranges(served, header, expected):
    url, _, source = served
    original = (source / "model.safetensors").read_bytes()
    status, headers, body = request(url, "/org/tiny/resolve/main/model.safetensors", headers={"Range": header})
    assert status == 206 and body == original[expected]
    first = range(len(original))[expected][0]
    assert headers["content-range"] == f"bytes {first}-{first + len(body) - 1}/{len(original)}"


@pytest.mark.parametrize("path, status, code", [
    ("/nobody/nothing/resolve/main/config.json", 404, "RepoNotFound"),
    ("/org/tiny/resolve/main/missing.bin", 404, "EntryNotFound"),
    ("/org/tiny/resolve/v9/config.json", 404, "RevisionNotFound"),
    ("/api/models/nobody/nothing/revision/main", 404, "RepoNotFound"),
    ("/api/models/org/tiny/revision/v9", 404, "RevisionNotFound"),
    ("/api/models/org/tiny/tree/main/nowhere", 404, "EntryNotFound"),
    ("/org/tiny/resolve/main/../../../etc/passwd", 400, None),
    ("/org/tiny/resolve/main/sub/..%2F..%2F..%2Fetc%2Fpasswd", 400, None),
    ("/org/tiny/resolve/main/%2e%2e/%2e%2e/etc/passwd", 400, None),
    ("/org/tiny/resolve/main/%252e%252e/etc/passwd", 404, "EntryNotFound"),  # a file named %2e%2e/etc/passwd: there is none
    ("/org/tiny/resolve/main/sub%5c..%5cx", 400, None),
    ("/org/tiny/resolve/main/a%00b", 400, None),
    ("/..", 400, None),
    ("/org@main/tiny/resolve/main/config.json", 404, "RepoNotFound"),
    ("/org/tiny/resolve/main/%0d%0aX-Injected:%20yes", 404, "EntryNotFound"),
    ("/org/tiny/resolve/main/caf%C3%A9.bin", 404, "EntryNotFound"),
    ("/favicon.ico", 404, None),
])
def test_bad_paths_get_clear_errors(served, path, status, code):
    url, _, _ = served
    got, headers, body = request(url, path)
    assert got == status, body
    assert headers.get("x-error-code") == code
    assert json.loads(body)["error"] and headers["x-error-message"] and "x-injected" not in headers
    if code == "EntryNotFound" and "resolve" in path:
        assert len(headers["x-repo-commit"]) == 40  # lets huggingface_hub cache the miss
    # and the server goes on serving
    assert request(url, "/org/tiny/resolve/main/config.json")[0] == 200


@pytest.mark.parametrize("header, status", [
    ("bytes=abc", 400), ("bytes=5-2", 400), ("bytes=-", 400),
    ("bytes=99999999-", 416), ("bytes=-0", 416),
])
def test_bad_ranges(served, header, status):
    url, _, source = served
    got, headers, _ = request(url, "/org/tiny/resolve/main/model.safetensors", headers={"Range": header})
    assert got == status
    if status == 416:
        assert headers["content-range"] == f"bytes */{(source / 'model.safetensors').stat().st_size}"


def test_methods_other_than_get_and_head_are_refused(served):
    url, _, _ = served
    for method in ("POST", "PUT", "DELETE"):
        assert request(url, "/org/tiny/resolve/main/config.json", method)[0] in (405, 501)


def test_damaged_archive_fails_alone(served):
    url, store, source = served
    entry = store.resolve("org/tiny")
    other = store.resolve("other")
    # Damage the other archive's payload (its header stays readable), then its header.
    damaged = largest_object(store, other)
    data = bytearray(damaged.read_bytes())
    data[-200:-100] = bytes(100)
    damaged.write_bytes(bytes(data))
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        request(url, "/other/resolve/main/model.safetensors")
    assert request(url, "/org/tiny/resolve/main/model.safetensors")[2] == (source / "model.safetensors").read_bytes()

    second = compress_into(store, source / "config.json", "broken")
    raw = bytearray(second.archive.read_bytes())
    raw[30] ^= 0xFF  # inside the JSON header: the archive cannot be opened at all
    second.archive.write_bytes(bytes(raw))
    status, _, body = request(url, "/broken/resolve/main/config.json")
    assert status == 500 and "damaged" in json.loads(body)["error"]
    assert request(url, f"/org/tiny/resolve/{entry.commit}/config.json")[0] == 200


def test_bearer_token(tiny_model, tmp_path):
    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "org/tiny")
    with running_server(store, token="s3cret") as url:
        assert request(url, "/org/tiny/resolve/main/config.json")[0] == 401
        assert request(url, "/org/tiny/resolve/main/config.json", headers={"Authorization": "Bearer wrong"})[0] == 401
        status, _, body = request(url, "/org/tiny/resolve/main/config.json", headers={"Authorization": "Bearer s3cret"})
        assert status == 200 and body == (tiny_model / "config.json").read_bytes()
    from zoo.errors import ZooError

    for unsendable in (" ", "s3 cret", "ü"):  # accepted, then every request got 401
        with pytest.raises(ZooError, match="visible ASCII"):
            make_server(store, token=unsendable)
    with pytest.raises(ZooError, match="the token is empty"):  # `--token "$UNSET"` served without one
        make_server(store, token="")


def test_serve_refuses_an_empty_token_from_the_option_or_the_environment(tmp_path):
    for arguments, environment in ((["--token", ""], {}), ([], {"ZOO_SERVE_TOKEN": ""})):
        done = subprocess.run([sys.executable, "-m", "zoo", "serve", "--port", "0", *arguments], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "ZOO_HOME": str(tmp_path / "zoo"), **environment})
        assert done.returncode == 1 and done.stderr.strip() == "error: the token is empty: give one, or leave it out to serve without a token", done.stderr


def test_lossy_variant_is_served_decoded(tiny_model, tmp_path):
    from zoo import open as open_archive

    store = Store(tmp_path / "zoo")
    lossless = compress_into(store, tiny_model, "org/tiny")
    lossy = compress_into(store, tiny_model, "org/tiny", pipeline="truncate:bits=4")
    assert lossy.variant != "lossless" and lossy.commit != lossless.commit
    with open_archive(lossy.archive) as archive:
        decoded = archive.read_file("model.safetensors")
    assert decoded != (tiny_model / "model.safetensors").read_bytes()
    with running_server(store) as url:
        # without a variant the lossless one is served; REVISION:VARIANT picks another
        assert request(url, "/org/tiny/resolve/main/model.safetensors")[2] == (tiny_model / "model.safetensors").read_bytes()
        quoted = f"main%3A{lossy.variant.replace('|', '%7C').replace(':', '%3A').replace('=', '%3D')}"
        status, headers, body = request(url, f"/org/tiny/resolve/{quoted}/model.safetensors")
        assert status == 200 and body == decoded and headers["etag"] == f'"{sha256(decoded)}"'
        status, headers, body = request(url, f"/org/tiny/resolve/{lossy.commit}/model.safetensors", headers={"Range": "bytes=10-"})
        assert status == 206 and body == decoded[10:]
        from huggingface_hub import hf_hub_download

        path = hf_hub_download("org/tiny", "model.safetensors", revision=f"main:{lossy.variant}", endpoint=url, cache_dir=tmp_path / "hf")
        assert Path(path).read_bytes() == decoded


def test_a_model_stored_only_lossy_is_never_served_as_its_bare_name(tiny_model, tmp_path):
    """With its lossless variant removed, `main` served the lossy one: a script asking for the
    model got quantized weights it had not asked for. Now only REVISION:VARIANT or its commit
    reach it, on the server as in the CLI."""
    import subprocess
    import sys

    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import RevisionNotFoundError

    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "org/tiny")
    lossy = compress_into(store, tiny_model, "org/tiny", pipeline="truncate:bits=4")
    store.remove("org/tiny:lossless")
    compress_into(store, tiny_model, "org/tiny", "v1")  # lossless at another revision: not main either
    with running_server(store) as url:
        status, _, body = request(url, "/org/tiny/resolve/main/model.safetensors")
        assert status == 404 and f"ask for revision 'main:{lossy.variant}'" in body.decode(), body
        assert request(url, "/api/models/org/tiny")[0] == 404
        with pytest.raises(RevisionNotFoundError):
            snapshot_download("org/tiny", endpoint=url, cache_dir=tmp_path / "hf")
        path = hf_hub_download("org/tiny", "model.safetensors", revision=f"main:{lossy.variant}", endpoint=url, cache_dir=tmp_path / "hf")
        assert Path(path).read_bytes() != (tiny_model / "model.safetensors").read_bytes()
        assert request(url, f"/org/tiny/resolve/{lossy.commit}/model.safetensors")[0] == 200
    env = {**os.environ, "ZOO_HOME": str(tmp_path / "zoo")}
    done = subprocess.run([sys.executable, "-m", "zoo", "export", "org/tiny", "-o", tmp_path / "out"], capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "holds org/tiny@main only as lossy variants" in done.stderr and not (tmp_path / "out").exists()
    done = subprocess.run([sys.executable, "-m", "zoo", "export", f"org/tiny:{lossy.variant}", "-o", tmp_path / "out"], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr


def test_a_model_stored_by_another_lossless_pipeline_is_the_model_by_its_bare_name(tiny_model, tmp_path):
    """`-p zstd` loses nothing, but its variant was taken for a lossy one: `decompress NAME` said
    the zoo held the model only as lossy variants, serve answered 404 for main, and zoo ls showed
    no bit-exact. Its files come back bit for bit, so the bare name reaches it (after the default
    lossless variant); a lossy variant still never does."""
    from huggingface_hub import snapshot_download

    from zoo.hub.manifest import quality_label

    store = Store(tmp_path / "zoo")
    plain = compress_into(store, tiny_model, "org/tiny", pipeline="zstd")
    compress_into(store, tiny_model, "org/tiny", pipeline="truncate:bits=4")
    assert plain.variant != "lossless" and [e.ref for e in store.readable("org/tiny")] == [plain.ref]
    assert quality_label(next(e for e in store.entries(with_files=True) if e.variant == plain.variant)) == "bit-exact"
    with running_server(store) as url:
        assert request(url, "/org/tiny/resolve/main/model.safetensors")[2] == (tiny_model / "model.safetensors").read_bytes()
        got = Path(snapshot_download("org/tiny", endpoint=url, cache_dir=tmp_path / "hf"))
        assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in tiny_model.iterdir())
    default = compress_into(store, tiny_model, "org/tiny")
    assert store.readable("org/tiny")[0].ref == default.ref


def test_a_name_without_a_revision_is_main_for_a_variant_too_and_rm_takes_a_lossy_only_model(tiny_model, tmp_path):
    """NAME:VARIANT without a revision took another revision's variant where main lacks it; a
    model stored only lossy could not be removed by its name, --all or not."""
    import subprocess
    import sys

    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "org/d")
    compress_into(store, tiny_model, "org/d", "v1", pipeline="truncate:bits=6")
    env = {**os.environ, "ZOO_HOME": str(tmp_path / "zoo")}

    def zoo_cli(*args):
        return subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True, env=env)

    done = zoo_cli("export", "org/d:truncate:bits=6", "-o", tmp_path / "out")
    assert done.returncode == 1 and "no such revision or variant" in done.stderr and not (tmp_path / "out").exists()
    assert zoo_cli("export", "org/d@v1:truncate:bits=6", "-o", tmp_path / "out").returncode == 0
    compress_into(store, tiny_model, "org/lossy", pipeline="truncate:bits=6")
    compress_into(store, tiny_model, "org/lossy", pipeline="truncate:bits=4")
    assert "name one, or pass --all" in zoo_cli("rm", "org/lossy").stderr
    done = zoo_cli("rm", "org/lossy", "--all")
    assert done.returncode == 0 and done.stdout.count("removed org/lossy@main:truncate:bits=") == 2, done.stderr


def test_links_in_a_model_are_served_as_the_files_they_lead_to(tiny_model, tmp_path):
    """The Hub has no links: a link inside the model is listed and downloaded under its own name
    with the bytes of the file it leads to; one to nothing or out of the model is not offered."""
    import os
    import shutil

    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    folder = tmp_path / "linked"
    shutil.copytree(tiny_model, folder)
    (folder / "sub").mkdir(exist_ok=True)
    os.symlink("model.safetensors", folder / "alias.safetensors")
    os.symlink("../config.json", folder / "sub" / "config.json")
    os.symlink("../alias.safetensors", folder / "sub" / "twice.safetensors")  # a link to a link
    os.symlink("nowhere.bin", folder / "dangling.bin")
    store = Store(tmp_path / "zoo")
    compress_into(store, folder, "org/linked")  # the dangling link kept as a link
    weights = (tiny_model / "model.safetensors").read_bytes()
    with running_server(store) as url:
        names = [s.rfilename for s in HfApi(endpoint=url).model_info("org/linked", files_metadata=True).siblings]
        assert {"alias.safetensors", "sub/config.json", "sub/twice.safetensors"} <= set(names) and "dangling.bin" not in names
        for name in ("alias.safetensors", "sub/twice.safetensors"):
            path = hf_hub_download("org/linked", name, endpoint=url, cache_dir=tmp_path / "hf")
            assert Path(path).read_bytes() == weights
        snapshot = Path(snapshot_download("org/linked", endpoint=url, cache_dir=tmp_path / "hf2"))
        assert (snapshot / "sub" / "config.json").read_bytes() == (tiny_model / "config.json").read_bytes()
        assert request(url, "/org/linked/resolve/main/dangling.bin")[0] == 404


def test_names_holding_percent_escapes_are_served_as_listed(tiny_model, tmp_path):
    """Files named x%5Cy.txt, p%00q.txt and %2e%2e were listed, then refused as escapes: the server
    decoded each request segment twice. huggingface_hub asks for them once encoded (x%255Cy.txt)."""
    import shutil

    from huggingface_hub import HfApi, hf_hub_download

    folder = tmp_path / "pct"
    shutil.copytree(tiny_model, folder)
    names = {"x%5Cy.txt": b"backslash once decoded\n", "p%00q.txt": b"nul once decoded\n", "%2e%2e": b"dots once decoded\n"}
    for name, data in names.items():
        (folder / name).write_bytes(data)
    store = Store(tmp_path / "zoo")
    compress_into(store, folder, "org/pct")
    with running_server(store) as url:
        listed = {s.rfilename for s in HfApi(endpoint=url).model_info("org/pct").siblings}
        assert set(names) <= listed
        for name, data in names.items():
            assert Path(hf_hub_download("org/pct", name, endpoint=url, cache_dir=tmp_path / "hf")).read_bytes() == data


@pytest.mark.slow
def test_hf_hub_download_thirty_two_at_once(served, tmp_path):
    """A bounded load test: 32 concurrent downloads, of the same files and of different ones,
    through the real huggingface_hub client, each into its own cache; all bit-exact."""
    from huggingface_hub import hf_hub_download

    url, store, source = served
    other_weights = store.resolve("other").archive
    from zoo import open as open_archive

    with open_archive(other_weights) as archive:
        other_bytes = archive.read_file("model.safetensors")
    jobs = [("org/tiny", ["model.safetensors", "config.json", "sub/notes.txt"][i % 3]) for i in range(24)]
    jobs += [("other", "model.safetensors")] * 8
    expected = {("other", "model.safetensors"): other_bytes}
    for name in ("model.safetensors", "config.json", "sub/notes.txt"):
        expected[("org/tiny", name)] = (source / name).read_bytes()

    def fetch(job: tuple[int, tuple[str, str]]) -> bool:
        number, (repo, name) = job
        path = hf_hub_download(repo, name, endpoint=url, cache_dir=tmp_path / f"cache{number}", etag_timeout=30)
        return Path(path).read_bytes() == expected[(repo, name)]

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(fetch, enumerate(jobs)))
    assert len(results) == 32 and all(results)
    assert time.monotonic() - started < 60


def test_streaming_memory_stays_bounded(tmp_path):
    """A file far bigger than a chunk streams with memory near a few chunks, not the file."""
    folder = tmp_path / "big"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": ("F32", random_storage("F32", (1536, 4096), 3))})  # 24 MiB
    store = Store(tmp_path / "zoo")
    compress_into(store, folder, "big", chunk_bytes=128 << 10)
    size = (folder / "model.safetensors").stat().st_size
    digest = hashlib.sha256()
    with running_server(store) as url:
        host, port = url.removeprefix("http://").split(":")
        tracemalloc.start()
        try:
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            connection.request("GET", commit_path(url, "/big/resolve/main/model.safetensors"))
            response = connection.getresponse()
            while block := response.read(64 << 10):
                digest.update(block)
            connection.close()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert digest.hexdigest() == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert peak < size / 6, f"peak {peak} bytes while streaming {size}"


def test_serve_command_answers_huggingface_hub(tiny_model, tmp_path):
    """The CLI itself: `zoo serve --port 0` in a subprocess, found through the URL it prints."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ZOO_HOME": str(tmp_path / "zoo")}
    compress_into(Store(tmp_path / "zoo"), tiny_model, "org/tiny")
    process = subprocess.Popen([sys.executable, "-m", "zoo", "serve", "--port", "0", "--quiet"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        url = line.split(" at ")[1].split()[0]
        status, _, body = request(url, "/org/tiny/resolve/main/config.json")
        assert status == 200 and body == (tiny_model / "config.json").read_bytes()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_answers_from_memory_follow_every_change_to_the_catalogue(served):
    """A resolve answered on the loop's thread from what the catalogue said before: removing a
    model, or adding a revision, is seen by the very next request."""
    url, store, source = served
    path = "/org/tiny/resolve/main/config.json"
    assert request(url, path)[0] == 200
    assert request(url, path)[0] == 200  # from memory now
    assert request(url, "/org/tiny/resolve/v2/config.json")[0] == 404
    compress_into(store, source, "org/tiny", revision="v2")
    assert request(url, "/org/tiny/resolve/v2/config.json")[0] == 200
    store.remove("org/tiny", every=True)
    status, headers, _ = request(url, path)
    assert status == 404 and headers["x-error-code"] == "RepoNotFound"


def test_a_stamp_changes_with_each_commit_to_the_catalogue(served):
    _, store, source = served
    before = store.index_stamp()
    assert before is not None and store.index_stamp() == before
    compress_into(store, source, "org/tiny", revision="v3")
    assert store.index_stamp() not in (None, before)
    store.dirty.touch()  # a writer died before updating the index: no telling
    assert store.index_stamp() is None


def accepted_side(client: socket.socket) -> socket.socket | None:
    """The server's end of `client`'s connection, when the server runs in this process: a
    duplicate of the open socket whose peer is the client's own address (Linux: /proc/self/fd)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            candidate = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if candidate.type == socket.SOCK_STREAM and candidate.getpeername() == client.getsockname():
                return candidate
        except OSError:
            pass
        candidate.close()
    return None


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the server's socket through /proc")
def test_each_connection_keeps_little_unsent_in_the_kernel(tmp_path):
    """TCP_NOTSENT_LOWAT is set on every connection the server accepts (zoo.hub.serve.limit_unsent)."""
    from zoo.hub.serve import UNSENT_BYTES

    with running_server(Store(tmp_path / "zoo")) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as client:
            deadline, value = time.monotonic() + 10, None
            while value != UNSENT_BYTES and time.monotonic() < deadline:  # accepted on the server's thread
                server_end = accepted_side(client)
                if server_end is not None:
                    with server_end:
                        value = server_end.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
                time.sleep(0.01)
            assert value == UNSENT_BYTES


def test_a_download_survives_its_archive_shrinking_under_the_server(tiny_model, tmp_path):
    """`zoo serve` maps archives: a file cut short while mapped fails that download (a 500, or a
    connection closed short of its length), and the server goes on serving."""
    import os
    import subprocess
    import sys

    store = Store(tmp_path / "zoo")
    big = tmp_path / "big"
    big.mkdir()
    weights = {f"w{index}": ("F32", random_storage("F32", (256, 256), index)) for index in range(4)}
    write_safetensors(big / "model.safetensors", weights)
    compress_into(store, big, "big", chunk_bytes=64 << 10)
    compress_into(store, tiny_model, "org/tiny")
    process = subprocess.Popen([sys.executable, "-m", "zoo", "serve", "--port", "0", "--quiet"],
                               env={**os.environ, "ZOO_HOME": str(tmp_path / "zoo")}, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stderr.readline().split(" at ")[1].split()[0]
        assert request(url, "/big/resolve/main/model.safetensors")[2] == (big / "model.safetensors").read_bytes()
        shrunk = largest_object(store, store.resolve("big"))
        os.truncate(shrunk, shrunk.stat().st_size // 3)
        try:
            status, _, _ = request(url, "/big/resolve/main/model.safetensors")
            assert status == 500
        except (http.client.IncompleteRead, ConnectionError):
            pass
        assert process.poll() is None
        assert request(url, "/org/tiny/resolve/main/config.json")[2] == (tiny_model / "config.json").read_bytes()
    finally:
        process.terminate()
        process.wait(timeout=10)
    log = process.stderr.read()
    assert ("shrank while" if kernels.map_file is not None else "truncated") in log, log


def _held_deleted(folder: Path) -> list[str]:
    """Files under `folder` this process holds open or mapped though they were deleted."""
    import os

    held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")]
    held += [line.split(maxsplit=5)[-1] for line in Path("/proc/self/maps").read_text().splitlines() if len(line.split()) > 5]
    return sorted({path for path in held if path.startswith(str(folder)) and path.endswith("(deleted)")})


def test_a_model_removed_while_served_gives_its_disk_space_back(served, tmp_path):
    """After `zoo rm` the server kept the model's deleted archive and objects open and mapped: the
    disk space came back only when it stopped. The next request after the catalogue changed lets
    go of them."""
    import gc

    url, store, _ = served
    status, _, body = request(url, "/other/resolve/main/model.safetensors")
    assert status == 200 and body
    store.remove("other")
    assert request(url, "/other/resolve/main/model.safetensors")[0] == 404
    assert request(url, "/org/tiny/resolve/main/config.json")[0] == 200
    gc.collect()
    assert _held_deleted(tmp_path / "zoo") == []


def test_a_server_under_a_low_limit_on_open_files_serves_every_model(tmp_path):
    """It kept 64 archives open whatever `ulimit -n` allowed: under 64, after 48 models every
    request, in every later round, was a 500 (OSError 24, Too many open files)."""
    import os
    import resource
    import subprocess
    import sys

    home = tmp_path / "zoo"
    store = Store(home)
    for number in range(60):
        (tmp_path / "src" / f"m{number}").mkdir(parents=True)
        write_safetensors(tmp_path / "src" / f"m{number}" / "model.safetensors", {"w": ("F32", random_storage("F32", (16, 16), number))})
        compress_into(store, tmp_path / "src" / f"m{number}", f"m{number}")
    process = subprocess.Popen([sys.executable, "-m", "zoo", "serve", "--port", "0", "--quiet"], env={**os.environ, "ZOO_HOME": str(home)},
                               stderr=subprocess.PIPE, text=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)))
    try:
        url = process.stderr.readline().split(" at ")[1].split()[0]
        for _ in range(2):
            for number in range(60):
                status, _, body = request(url, f"/m{number}/resolve/main/model.safetensors")
                assert status == 200 and body == (tmp_path / "src" / f"m{number}" / "model.safetensors").read_bytes(), (number, body[:200])
    finally:
        process.terminate()
        process.wait(timeout=10)
