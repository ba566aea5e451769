"""Pulling from a hub: `zoo pull` and transformers in subprocesses with HF_ENDPOINT pointing at a
real `zoo serve` on 127.0.0.1 (huggingface_hub reads its environment at import, hence the
subprocesses), served from a first zoo and pulled into a second one."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.api import compress_into
from zoo.hub.store import Store

from tests.conftest import random_storage, write_safetensors
from tests.hub.test_serve import running_server

INFER = """
import sys, torch
from transformers import AutoModel
served = AutoModel.from_pretrained(sys.argv[1]).eval()
original = AutoModel.from_pretrained(sys.argv[2]).eval()
ids = torch.arange(24).reshape(2, 12) % 99
with torch.no_grad():
    same = torch.equal(served(ids).last_hidden_state, original(ids).last_hidden_state)
print("equal" if same else "different")
"""


def zoo_cli(*args, env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True, check=False,
                          env={**os.environ, **env}, cwd=cwd, timeout=300)


def hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A real transformers model, tiny and randomly initialised, saved as a Hugging Face folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                     max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("tiny-bert")
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "README.md").write_text("a tiny model\n")
    return folder


@pytest.fixture
def hub(tiny_bert, tmp_path):
    """A first zoo holding the model as 'org/tiny-bert', served; the environment of a client."""
    upstream = Store(tmp_path / "upstream")
    compress_into(upstream, tiny_bert, "org/tiny-bert")
    with running_server(upstream) as url:
        yield url, upstream, {"HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "ZOO_HOME": str(tmp_path / "second"),
                              "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.mark.slow
def test_store_serve_pull_export_is_bit_exact(hub, tiny_bert, tmp_path):
    _, upstream, env = hub
    done = zoo_cli("pull", "org/tiny-bert", env=env)
    assert done.returncode == 0, done.stderr
    assert "stored org/tiny-bert@main:lossless" in done.stdout
    second = Store(tmp_path / "second")
    entry = second.resolve("org/tiny-bert", with_files=True)
    assert entry.commit == upstream.resolve("org/tiny-bert").commit  # lossless: the upstream commit is kept
    assert {f.path: f.sha256 for f in entry.files} == hashes(tiny_bert)
    assert zoo_cli("export", "org/tiny-bert", "-o", tmp_path / "exported", env=env).returncode == 0
    assert hashes(tmp_path / "exported") == hashes(tiny_bert)

    again = zoo_cli("pull", "org/tiny-bert", "--json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["commit"] == entry.commit
    assert "already in the zoo" not in again.stdout  # --json prints only the document

    listed = json.loads(zoo_cli("ls", "--json", env=env).stdout)["models"]
    assert [(m["name"], m["revision"], m["variant"], m["quality_label"]) for m in listed] == [("org/tiny-bert", "main", "lossless", "bit-exact")]


@pytest.mark.slow
def test_from_pretrained_through_hf_endpoint_matches_the_original(hub, tiny_bert, tmp_path):
    _, _, env = hub
    done = subprocess.run([sys.executable, "-c", INFER, "org/tiny-bert", str(tiny_bert)], capture_output=True, text=True, check=False,
                          env={**os.environ, **env}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "equal"


def test_pull_with_filters_and_revision(hub, tmp_path):
    _, _, env = hub
    done = zoo_cli("pull", "org/tiny-bert@main", "--include", "*.json", "--include", "*.md", "--exclude", "README*", "--name", "just-config",
                   env=env)
    assert done.returncode == 0, done.stderr
    assert "it/s" not in done.stderr and "Fetching" not in done.stderr, done.stderr  # piped: no download bars
    entry = Store(tmp_path / "second").resolve("just-config", with_files=True)
    assert [f.path for f in entry.files] == ["config.json"]


def test_a_hub_id_into_an_archive_notes_the_options_only_the_zoo_reads(hub, tmp_path):
    """compress ORG/M -o OUT.zoo dropped --name and --no-delta without the note a local model gets."""
    _, _, env = hub
    done = zoo_cli("compress", "org/tiny-bert", "-o", tmp_path / "t.zoo", "--name", "mine", "--no-delta", env=env)
    assert done.returncode == 0, done.stderr
    assert "note: --no-delta applies to the zoo; an archive written with -o holds no XORs\n" in done.stderr
    assert "note: --name names a model in the zoo; an archive written with -o is known by its path\n" in done.stderr
    assert (tmp_path / "t.zoo").is_file() and not (tmp_path / "second").exists()


@pytest.mark.slow
def test_pull_with_a_lossy_pipeline_shows_its_survey(hub, tmp_path):
    """l2's survey runs before the first byte: `zoo pull` shows it as `zoo compress` does, and
    --json shows nothing on stderr."""
    _, _, env = hub
    terminal = {**env, "FORCE_COLOR": "1", "COLUMNS": "120"}  # stderr counts as a terminal
    shown = zoo_cli("pull", "org/tiny-bert", "-p", "l2:target_ratio=4", "--name", "lossy", env=terminal)
    assert shown.returncode == 0, shown.stderr
    assert "surveying rates" in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.stderr)
    quiet = zoo_cli("pull", "org/tiny-bert", "-p", "l2:target_ratio=4", "--name", "lossy-json", "--json", env=terminal)
    assert quiet.returncode == 0, quiet.stderr
    assert "surveying" not in quiet.stderr and json.loads(quiet.stdout)["name"] == "lossy-json"


def test_pull_does_not_replace_a_model_of_the_name_that_no_pull_of_its_repository_stored(hub, tiny_bert, tmp_path):
    # `zoo compress my_finetune/` names it after its base's hub id; `zoo pull` of that id then
    # replaced it, objects and all, with no --force and exit 0
    from zoo import batch
    from zoo.errors import OutputExistsError

    _, _, env = hub
    mine = tmp_path / "mine"
    mine.mkdir()
    write_safetensors(mine / "model.safetensors", {"w": ("F32", random_storage("F32", (32, 16), 3))})
    second = Store(tmp_path / "second")
    compress_into(second, mine, "org/tiny-bert", source_label=str(mine))  # as zoo compress stores it
    kept = second.resolve("org/tiny-bert", with_files=True)
    done = zoo_cli("pull", "org/tiny-bert", env=env)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"error: org/tiny-bert@main:lossless is already in the zoo, stored from {mine}, not pulled from org/tiny-bert; "
                           "pass --force to store the pull beside or over it, or --name to store it under another name\n")
    # nor sets the hub's weights beside it as another variant of the same NAME@REVISION
    done = zoo_cli("pull", "org/tiny-bert", "-p", "truncate:bits=8", env=env)
    assert done.returncode == 1 and "org/tiny-bert@main:lossless is already in the zoo" in done.stderr, done.stderr
    with pytest.raises(OutputExistsError, match=r"^org/tiny-bert@main:lossless \(stored from .*mine\) is already in the zoo, not pulled "
                                                r"from its repository; pass --force"):
        batch.pull_many(["org/tiny-bert"], store=second, pipeline="truncate:bits=8", ray="127.0.0.1:1")  # refused before Ray is asked for
    assert [e.variant for e in second.entries("org/tiny-bert")] == ["lossless"]
    assert second.resolve("org/tiny-bert", with_files=True).files == kept.files
    assert zoo_cli("pull", "org/tiny-bert", "--name", "org/upstream", env=env).returncode == 0
    assert zoo_cli("pull", "org/tiny-bert", "--name", "org/upstream", env=env).returncode == 0  # its own pull again: fine
    done = zoo_cli("pull", "org/tiny-bert", "--force", env=env)
    assert done.returncode == 0, done.stderr
    assert {f.path: f.sha256 for f in second.resolve("org/tiny-bert", with_files=True).files} == hashes(tiny_bert)


def test_pull_errors_are_one_line(hub, tmp_path):
    _, _, env = hub
    for args, words in ((["nobody/nothing"], "has no repository nobody/nothing"), (["org/tiny-bert@v9"], "has no revision 'v9'"),
                        (["not a repo!"], "neither a local file")):
        done = zoo_cli("pull", *args, env=env)
        assert done.returncode == 1 and words in done.stderr, done.stderr
        assert done.stderr.startswith("error: ") and done.stderr.strip().count("\n") == 0
    assert Store(tmp_path / "second").entries() == []


@pytest.mark.parametrize("column, path, listed, said", [
    ("served_sha256", "model.safetensors", "ab" * 32, "model.safetensors arrived with sha256"),
    ("git_oid", "config.json", "ab" * 20, "config.json arrived with git oid")])  # once unchecked: it was stored
def test_pull_refuses_a_file_whose_bytes_are_not_what_the_hub_lists(hub, tmp_path, column, path, listed, said):
    """A hub that announces one sha256 (an LFS file) or git oid (a file kept in git) and sends
    other bytes: nothing enters the zoo, and the bad copy leaves the Hugging Face cache so that the
    next pull fetches it again."""
    _, upstream, env = hub
    with sqlite3.connect(upstream.catalogue) as connection:
        connection.execute(f"UPDATE files SET {column} = ? WHERE path = ?", (listed, path))
    done = zoo_cli("pull", "org/tiny-bert", env=env)
    assert done.returncode == 1 and said in done.stderr, done.stderr
    assert Store(tmp_path / "second").entries() == []
    cached = list((tmp_path / "hf").rglob(path))
    assert all(not cached_path.exists() for cached_path in cached)


def test_a_failed_hub_check_keeps_the_old_output(hub, tmp_path):
    """compress HUB_ID -o OUT --force checks the download before OUT is replaced: a failed check
    leaves the archive that was there."""
    _, upstream, env = hub
    output = tmp_path / "bert.zoo"
    output.write_bytes(b"the old archive")
    with sqlite3.connect(upstream.catalogue) as connection:
        connection.execute("UPDATE files SET served_sha256 = ? WHERE path = 'model.safetensors'", ("ab" * 32,))
    done = zoo_cli("compress", "org/tiny-bert", "-o", output, "--force", env=env)
    assert done.returncode == 1 and "model.safetensors arrived with sha256" in done.stderr, done.stderr
    assert output.read_bytes() == b"the old archive"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bert")] == []


def test_offline_pull_uses_the_cache(hub, tmp_path):
    _, _, env = hub
    assert zoo_cli("pull", "org/tiny-bert", "--include", "config.json", env=env).returncode == 0
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    done = zoo_cli("pull", "org/tiny-bert", "--include", "config.json", "--name", "offline-copy", env=offline)
    assert done.returncode == 0, done.stderr
    done = zoo_cli("pull", "org/other", "--name", "never", env=offline)
    assert done.returncode == 1 and "cannot pull org/other@main" in done.stderr
    # online, with the hub out of reach and the cache whole: huggingface_hub serves the cache, and
    # the listing it keeps there says what the model holds (zoo's own call to the hub failed after 24 s)
    unreachable = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = zoo_cli("pull", "org/tiny-bert", "--include", "config.json", "--name", "unreachable-copy", env=unreachable)
    assert done.returncode == 0, done.stderr


def test_a_failed_pull_says_why_in_words(hub):
    url, _, env = hub
    expected = {("org/nothing",): f"the hub at {url} has no repository org/nothing, or it is private (set HF_TOKEN)",
                ("org/tiny-bert@nope",): f"the hub at {url} has no revision 'nope' of org/tiny-bert",
                ("org/tiny-bert", "HF_ENDPOINT=http://127.0.0.1:9"): "the hub at http://127.0.0.1:9 cannot be reached ("}
    for (ref, *override), words in expected.items():
        done = zoo_cli("pull", ref, env={**env, **dict(item.split("=", 1) for item in override)})
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"error: cannot pull {ref if '@' in ref else ref + '@main'}: {words}"), done.stderr
        assert "Error" not in done.stderr  # no class names of huggingface_hub's


def test_a_download_cut_off_halfway_is_said_in_one_line_of_words(tmp_path, monkeypatch, caplog):
    """A hub that closed the connection halfway through a file: huggingface_hub warned "Error while
    downloading ... Trying to resume download..." at each of its retries (13 lines on stderr), and
    zoo's error named httpx's class (RemoteProtocolError: peer closed connection ...)."""
    import http.client
    import logging
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import huggingface_hub.file_download

    from zoo.hub import pull

    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {"w": ("F32", random_storage("F32", (256, 256), 0))})
    upstream = Store(tmp_path / "upstream")
    compress_into(upstream, model, "org/a")

    class CuttingHalfway(BaseHTTPRequestHandler):
        """Passes each request on to the hub; the weights' bytes stop halfway, and the connection closes."""
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            connection = http.client.HTTPConnection(hub.removeprefix("http://"), timeout=30)
            connection.request(self.command, self.path, headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
            response = connection.getresponse()
            body = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.end_headers()
            cut = self.command == "GET" and "/resolve/" in self.path and self.path.endswith("/model.safetensors")
            if self.command == "GET":
                self.wfile.write(body[:len(body) // 2] if cut else body)
            self.close_connection = cut

        do_HEAD = do_GET

    # huggingface_hub waits a second before each of its five retries: the waits are not what this is about
    monkeypatch.setattr(huggingface_hub.file_download, "time", type("NoWaits", (), {"sleep": staticmethod(lambda seconds: None)}),
                        raising=False)
    file_download_log = logging.getLogger("huggingface_hub.file_download")
    before = file_download_log.level
    with running_server(upstream) as hub:
        proxy = ThreadingHTTPServer(("127.0.0.1", 0), CuttingHalfway)
        proxy.daemon_threads = True
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{proxy.server_port}"
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        try:
            with caplog.at_level(logging.WARNING), pytest.raises(pull.PullError) as raised:
                pull.pull("org/a", store=Store(tmp_path / "zoo"), progress_bars=False)
        finally:
            proxy.shutdown()
            proxy.server_close()
    said = str(raised.value)
    assert said.startswith(f"cannot pull org/a@main: the connection to the hub at {url} was lost (") and \
        said.endswith("); nothing was stored, pull again") and "Error" not in said and "\n" not in said, said
    assert [record.getMessage() for record in caplog.records if record.name.startswith("huggingface_hub")] == []
    assert file_download_log.level == before  # quiet only while zoo pulls

def test_hf_token_reaches_a_guarded_server(tiny_bert, tmp_path):
    upstream = Store(tmp_path / "upstream")
    compress_into(upstream, tiny_bert, "org/tiny-bert")
    with running_server(upstream, token="hf_s3cret") as url:
        env = {"HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "ZOO_HOME": str(tmp_path / "second")}
        for token in ({}, {"HF_TOKEN": "hf_wrong"}):  # said as a refusal, not as "HfHubHTTPError: Client error '401 ..."
            denied = zoo_cli("pull", "org/tiny-bert", env={**env, **token})
            assert denied.returncode == 1 and denied.stderr == (f"error: cannot pull org/tiny-bert@main: the hub at {url} refused "
                                                                "access (401): set HF_TOKEN to a token that may read org/tiny-bert\n"), denied.stderr
        allowed = zoo_cli("pull", "org/tiny-bert", env={**env, "HF_TOKEN": "hf_s3cret"})
        assert allowed.returncode == 0, allowed.stderr


def test_compress_accepts_a_hub_id(hub, tiny_bert, tmp_path):
    _, _, env = hub
    work = tmp_path / "work"
    work.mkdir()
    done = zoo_cli("compress", "org/tiny-bert", "-o", work / "bert.zoo", "--json", env=env, cwd=work)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metadata"]["source"].startswith("hub:org/tiny-bert@")
    done = zoo_cli("compress", "org/tiny-bert", "--pipeline", "truncate:bits=6", env=env, cwd=work)
    assert done.returncode == 0, done.stderr
    assert [e.variant for e in Store(tmp_path / "second").entries()] == ["truncate:bits=6"]
    # no ORG/NAME shape: a local path, missing, said at once without asking the hub
    done = zoo_cli("compress", "no-such-thing", env=env, cwd=work)
    assert done.returncode == 1 and done.stderr == "error: no-such-thing: no such file or folder\n"
    done = zoo_cli("compress", "org/no-such-thing", env=env, cwd=work)
    assert done.returncode == 1 and "nor is there a local file or folder" in done.stderr


def test_pull_of_a_local_folder_points_to_compress(tmp_path):
    # `zoo pull /path/to/model` said "'/path/to/model' is neither a local file or folder nor a hub
    # id" of a folder that is there
    from zoo.errors import InputError
    from zoo.hub.pull import parse_repo_ref

    folder = tmp_path / "my model"
    folder.mkdir()
    with pytest.raises(InputError) as refused:
        parse_repo_ref(str(folder))
    assert str(refused.value) == (f"{folder}: a local file or folder; `zoo pull` takes hub ids (ORG/NAME[@REVISION]): "
                                  f"`zoo compress '{folder}'` stores it")
    with pytest.raises(InputError, match="is neither a local file or folder nor a hub id"):
        parse_repo_ref(str(tmp_path / "absent"))
    assert parse_repo_ref("org/name@v1") == ("org/name", "v1")


def test_an_offline_pull_of_a_snapshot_that_lacks_listed_files_is_refused_and_keeps_the_model(hub, tmp_path):
    """A snapshot in the cache holding some of the model's files (transformers' AutoConfig
    fetches config.json alone) was stored offline as the whole model, over the one stored before."""
    _, _, env = hub
    assert zoo_cli("pull", "org/tiny-bert", env=env).returncode == 0
    assert zoo_cli("pull", "org/tiny-bert", "--include", "config.json", "--name", "part", env=env).returncode == 0
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "other-hf")}
    cache = tmp_path / "hf" / "hub" / "models--org--tiny-bert"
    snapshot = next((cache / "snapshots").iterdir())
    partial = tmp_path / "other-hf" / "hub" / "models--org--tiny-bert"
    (partial / "snapshots" / snapshot.name).mkdir(parents=True)
    (partial / "refs").mkdir()
    (partial / "refs" / "main").write_text(snapshot.name)
    (partial / "snapshots" / snapshot.name / "config.json").write_bytes((snapshot / "config.json").read_bytes())
    before = sorted(f.path for f in Store(tmp_path / "second").resolve("org/tiny-bert").files)
    done = zoo_cli("pull", "org/tiny-bert", "--force", env=offline)  # a cache of single files: no listing of the model
    assert done.returncode == 1 and "the Hugging Face cache holds no list of its files" in done.stderr, done.stderr
    (partial / "trees").mkdir()
    (partial / "trees" / f"{snapshot.name}.json").write_bytes((cache / "trees" / f"{snapshot.name}.json").read_bytes())
    done = zoo_cli("pull", "org/tiny-bert", "--force", env=offline)  # the listing says what is missing
    assert done.returncode == 1 and "the Hugging Face cache holds only part of it (missing: " in done.stderr, done.stderr
    assert "model.safetensors" in done.stderr and "Error" not in done.stderr, done.stderr
    assert sorted(f.path for f in Store(tmp_path / "second").resolve("org/tiny-bert").files) == before


def test_ctrl_c_stops_a_pull_whose_hub_stalls(tmp_path):
    """huggingface_hub waits out a stalled download (and a Retry-After of an hour) and joins its
    threads before an interrupt gets through: Ctrl-C and SIGTERM did nothing for minutes."""
    import signal
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    release = threading.Event()
    commit = "c" * 40

    class Stalling(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _json(self, document):
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.startswith("/api/models/org/stall/revision/"):
                return self._json({"id": "org/stall", "sha": commit, "siblings": [{"rfilename": "config.json"}]})
            if self.path.startswith("/api/models/org/stall/tree/"):
                return self._json([{"type": "file", "path": "config.json", "size": 2, "oid": "d" * 40}])
            release.wait(60)  # the file itself: never comes

        do_HEAD = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HOME": str(tmp_path / "hf"),
               "ZOO_HOME": str(tmp_path / "zoo"), "HF_HUB_DOWNLOAD_TIMEOUT": "60", "HF_HUB_ETAG_TIMEOUT": "60"}
        for stop, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            pulling = subprocess.Popen([sys.executable, "-m", "zoo", "pull", "org/stall"], env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            time.sleep(4)  # well into the download
            pulling.send_signal(stop)
            started = time.monotonic()
            try:
                _, said = pulling.communicate(timeout=15)
            finally:
                pulling.kill()
            assert pulling.returncode == code and time.monotonic() - started < 10, (pulling.returncode, said)
        assert not Store(tmp_path / "zoo").exists() or Store(tmp_path / "zoo").entries() == []
    finally:
        release.set()
        server.shutdown()


def test_a_listed_file_the_snapshot_lacks_after_the_download_is_an_error_not_left_out(hub, tmp_path, monkeypatch):
    """A server that answers a file for another commit has huggingface_hub file it in another
    snapshot: the model was stored without it, exit 0. Here the snapshot loses it on the way."""
    import huggingface_hub

    from zoo.hub import pull

    url, _, env = hub
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    real = huggingface_hub.snapshot_download

    def losing_one(*args, **options):
        folder = real(*args, **options)
        (Path(folder) / "model.safetensors").unlink()
        return folder

    monkeypatch.setattr(huggingface_hub, "snapshot_download", losing_one)
    with pytest.raises(pull.PullError, match=r"1 of the files the hub lists at commit \w+ did not arrive \(model\.safetensors\)"):
        pull.pull("org/tiny-bert", store=Store(tmp_path / "second"))
    assert Store(tmp_path / "second").entries() == []


@pytest.mark.parametrize("endpoint", ["http://localhost:99999", "http://[::1", "http://h:abc", "localhost:8000"])
def test_a_malformed_hf_endpoint_is_one_line_and_nothing_on_stdout(tmp_path, endpoint):
    """huggingface_hub parses HF_ENDPOINT at its import: a port out of range printed its import
    error to stdout, into --json's document, and zoo called the ValueError a bug of its own."""
    for command in (["pull", "org/model", "--json"], ["compress", "org/model", "-o", str(tmp_path / "m.zoo")]):
        done = subprocess.run([sys.executable, "-m", "zoo", *command], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "ZOO_HOME": str(tmp_path / "zoo"), "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": endpoint})
        assert done.returncode == 1 and done.stdout == "", (command, done.stdout)
        assert done.stderr.startswith(f"error: HF_ENDPOINT={endpoint!r} is not") and done.stderr.count("\n") == 1, done.stderr
