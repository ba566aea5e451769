"""zoo serve under the real huggingface_hub client: a repo stored under other revisions than main,
and what the access log counts for a refused HEAD. Every server listens on 127.0.0.1 only."""

from __future__ import annotations

from pathlib import Path

from tests.hub.test_serve import running_server
from zoo.api import compress_into
from zoo.hub.store import Store


def test_model_info_without_a_revision_answers_a_repo_that_has_no_main(tiny_model, tmp_path):
    """The Hub answers /api/models/REPO from the repo's default branch; a model stored only as
    org/tiny@v1 has no `main`, and repo_exists raised RevisionNotFoundError instead of saying True."""
    from huggingface_hub import HfApi

    store = Store(tmp_path / "zoo")
    entry = compress_into(store, tiny_model, "org/tiny", "v1")
    with running_server(store) as url:
        api = HfApi(endpoint=url)
        assert api.repo_exists("org/tiny") and not api.repo_exists("org/nothing")
        info = api.model_info("org/tiny")
        assert info.sha == entry.commit and "config.json" in {s.rfilename for s in info.siblings}
        assert api.model_info("org/tiny", revision="v1").sha == entry.commit


def test_the_access_log_counts_no_body_for_a_head_refused(tiny_model, tmp_path, capfd):
    """A HEAD answer carries no body, whatever its status: the log counted the bytes of the JSON
    error a GET would have had as sent (`"HEAD .../nothing.json HTTP/1.1" 404 55`)."""
    from tests.hub.test_serve import request

    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "org/tiny")
    with running_server(store, quiet=False) as url:
        status, _, body = request(url, "/org/tiny/resolve/main/nothing.json", method="HEAD")
        assert status == 404 and body == b""
        assert request(url, "/org/tiny/resolve/main/config.json", method="HEAD")[0] == 200
    lines = [line for line in capfd.readouterr().err.splitlines() if '"HEAD ' in line]
    # the branch's file is a redirect to its commit's URL, which answers the HEAD
    assert [line.rsplit(" ", 2)[1:] for line in lines] == [["404", "0"], ["307", "0"], ["200", "0"]]


def test_a_download_of_main_gets_the_default_branch_of_a_repo_that_has_no_main(tiny_model, tmp_path):
    """snapshot_download and hf_hub_download ask for `main` when their caller names no revision:
    the API answered the repo from v1 while `resolve/main` said RevisionNotFound."""
    from huggingface_hub import hf_hub_download, snapshot_download

    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "org/tiny", "v1")
    with running_server(store) as url:
        folder = snapshot_download("org/tiny", endpoint=url, cache_dir=tmp_path / "hf")
        files = [path for path in tiny_model.rglob("*") if path.is_file()]
        for path in files:
            assert (Path(folder) / path.relative_to(tiny_model)).read_bytes() == path.read_bytes()
        single = hf_hub_download("org/tiny", "config.json", endpoint=url, cache_dir=tmp_path / "hf2")
        assert Path(single).read_bytes() == (tiny_model / "config.json").read_bytes()
    compress_into(store, tiny_model / "config.json", "org/tiny", "main")  # once there is a main, main is main
    with running_server(store) as url:
        assert listed_files(url, "org/tiny") == ["config.json"]


def listed_files(url: str, repo: str) -> list[str]:
    from huggingface_hub import HfApi

    return HfApi(endpoint=url).list_repo_files(repo)


def test_many_spellings_of_one_revision_hold_its_entry_once(tmp_path):
    """Every spelling of a revision (`main:lossless`, `main: lossless`, ...) is remembered, and each
    kept its own copy of the model's file list: 1000 HEADs of a 3000-file model took a server
    from 51 MB to 1.8 GB."""
    from zoo.hub.serve import ZooApp

    folder = tmp_path / "many"
    folder.mkdir()
    for number in range(300):
        (folder / f"file_{number:04d}.txt").write_text(str(number))
    store = Store(tmp_path / "zoo")
    compress_into(store, folder, "many")
    app = ZooApp(store, quiet=True)
    spellings = [f"many@main:{' ' * k}lossless" for k in range(50)]
    found = [app._matches(ref, with_files=True) for ref in spellings]
    assert all(len(entries) == 1 and len(entries[0].files) == 300 for entries in found)
    assert len({id(entries[0]) for entries in found}) == 1
