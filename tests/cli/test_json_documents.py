"""What `--json` prints, as a script reads it: one document whatever the outcome a command reports
(damage included), in valid Unicode whatever the names in it hold, with the same facts as the text."""

import json
import os

from tests.cli.test_first_contact import ok, zoo_cli
from tests.conftest import random_storage, write_safetensors


def _archive(tmp_path, name="w.zoo"):
    weights = write_safetensors(tmp_path / "w.safetensors", {"a": ("F32", random_storage("F32", (16, 8), 1))})
    ok(zoo_cli("compress", weights, "-o", tmp_path / name))
    return tmp_path / name


def _flip(path, position):
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_reports_an_archive_too_damaged_to_open_as_damage(tmp_path):
    """A damaged header, a cut archive, a zoo model whose archive's header is damaged: `verify
    --json` printed no document (stdout empty, `error: ...` on stderr), where the whole zoo's verify
    lists the same damage under problems. A file that is no archive, or none, is still an error."""
    archive = _archive(tmp_path)
    home = tmp_path / "zoo"
    ok(zoo_cli("compress", tmp_path / "w.safetensors", "--name", "m", home=home))
    record = json.loads((home / "manifests" / "m" / "main" / "lossless.json").read_bytes())
    digest = next(o["sha256"] for o in record["objects"] if o["role"] == "archive")
    stored = home / "objects" / "sha256" / digest[:2] / f"{digest}.zoo"

    header = tmp_path / "header.zoo"
    header.write_bytes(archive.read_bytes())
    _flip(header, 40)  # in the header's JSON: its checksum fails
    cut = tmp_path / "cut.zoo"
    cut.write_bytes(archive.read_bytes()[:300])  # inside the header
    _flip(stored, 40)
    for ref, said in ((header, "archive header is damaged"), (cut, "truncated archive"), ("m", "archive header is damaged")):
        done = zoo_cli("verify", ref, "--json", home=home)
        assert done.returncode == 1 and done.stderr == "", done.stderr
        document = json.loads(done.stdout)
        assert document["ok"] is False and len(document["problems"]) == 1 and said in document["problems"][0], document
        assert document["not_rebuilt"] is None
    text = zoo_cli("verify", header)
    assert text.returncode == 1 and text.stdout == "" and text.stderr.startswith("damaged: "), text.stderr
    assert "header is damaged" in text.stderr, text.stderr

    (tmp_path / "notes.zoo").write_text("not an archive")
    for ref, said in ((tmp_path / "notes.zoo", "not a zoo archive"), (tmp_path / "none.zoo", "no such file"), (tmp_path, "is a folder")):
        done = zoo_cli("verify", ref, "--json", home=home)
        assert done.returncode == 1 and done.stdout == "" and done.stderr.startswith("error: ") and said in done.stderr, done.stderr


def _in_valid_unicode(value):
    """Every string in a parsed document encodes as UTF-8 (a lone surrogate does not)."""
    if isinstance(value, dict):
        return all(_in_valid_unicode(key) and _in_valid_unicode(item) for key, item in value.items())
    if isinstance(value, list):
        return all(map(_in_valid_unicode, value))
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def test_a_name_that_is_not_utf8_is_written_as_the_text_reports_write_it(tmp_path):
    """`caf\\xe9.zoo` (Latin-1 bytes) came out of --json as the lone surrogate "caf\\udce9.zoo":
    Perl's JSON decoder refused the document, and jq made it U+FFFD, which names no file. Now as
    the text reports write it: the four characters \\xe9."""
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / os.fsdecode(b"w\xe9.safetensors"), {"a": ("F32", random_storage("F32", (8, 8), 1))})
    archive = os.fsdecode(b"caf\xe9.zoo")
    compressed = json.loads(ok(zoo_cli("compress", model, "-o", archive, "--json", cwd=tmp_path)).stdout)
    shown = json.loads(ok(zoo_cli("info", archive, "--json", cwd=tmp_path)).stdout)
    checked = json.loads(ok(zoo_cli("verify", archive, "--json", cwd=tmp_path)).stdout)
    for document in (compressed, shown, checked):
        assert _in_valid_unicode(document) and document["archive"] == "caf\\xe9.zoo", document
    assert compressed["output"] == "caf\\xe9.zoo"
    assert [f["path"] for f in shown["files"]] == ["w\\xe9.safetensors"] and shown["tensors"][0]["file"] == "w\\xe9.safetensors"
    assert ok(zoo_cli("info", archive, cwd=tmp_path)).stdout.startswith("caf\\xe9.zoo: ")  # the text report's escape


def test_a_pull_says_whether_it_stored_the_model_as_the_text_does(tmp_path):
    """`zoo pull REPO --json` twice gave the same document but for adds_bytes, null the second
    time, where the text says `stored ...` and then `already in the zoo: ...`: now `new` says it,
    as in compress's document, and adds_bytes is the same both times."""
    from zoo.api import compress_into
    from zoo.hub.store import Store

    from tests.hub.test_serve import running_server

    (tmp_path / "m").mkdir()
    write_safetensors(tmp_path / "m" / "model.safetensors", {"a": ("F32", random_storage("F32", (8, 8), 1))})
    upstream = Store(tmp_path / "upstream")
    compress_into(upstream, tmp_path / "m", "org/m")
    with running_server(upstream) as url:
        env = {"HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        first, again = (json.loads(ok(zoo_cli("pull", "org/m", "--json", env=env, home=tmp_path / "zoo")).stdout) for _ in range(2))
    assert first.pop("new") is True and again.pop("new") is False
    assert first == again and first["adds_bytes"] > 0, (first, again)


def test_verify_names_the_lossy_files_it_could_not_hold_to_their_sha256(tmp_path):
    """`verify` of a lossy archive said `ok` alone, where its files' sha256 (of the original bytes)
    was never checked: decoding gives the values kept. It names them now, in the text and --json."""
    weights = write_safetensors(tmp_path / "w.safetensors", {"a": ("F32", random_storage("F32", (16, 8), 1))})
    ok(zoo_cli("compress", weights, "-o", tmp_path / "lossy.zoo", "-p", "truncate:bits=3"))
    ok(zoo_cli("compress", weights, "-o", tmp_path / "lossless.zoo"))
    text = ok(zoo_cli("verify", tmp_path / "lossy.zoo")).stdout
    assert text == (f"{tmp_path / 'lossy.zoo'}: ok; 1 lossy file (w.safetensors) checked as stored: it decodes to the values "
                    "kept, not to the original bytes its sha256 is of\n"), text
    assert json.loads(ok(zoo_cli("verify", tmp_path / "lossy.zoo", "--json")).stdout)["lossy_files"] == ["w.safetensors"]
    assert ok(zoo_cli("verify", tmp_path / "lossless.zoo")).stdout == f"{tmp_path / 'lossless.zoo'}: ok\n"
    assert json.loads(ok(zoo_cli("verify", tmp_path / "lossless.zoo", "--json")).stdout)["lossy_files"] == []
