"""A file asked for by a branch or a variant is a relative redirect to its commit's URL, as on the
Hub: the download, and any resumption of it, reads one stored version, never the next one's bytes
after its own (huggingface_hub resumes a cut download with a bare Range on the URL it downloaded
from)."""

from __future__ import annotations

import shutil
from pathlib import Path

from zoo.api import compress_into
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
