"""zoo serve under the real huggingface_hub client: a repo stored under other revisions than main,
and what the access log counts for a refused HEAD. Every server listens on 127.0.0.1 only."""

from __future__ import annotations

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
    assert [line.rsplit(" ", 2)[1:] for line in lines] == [["404", "0"], ["200", "0"]]
