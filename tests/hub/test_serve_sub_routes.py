"""A route of a one-segment model that zoo serve lacks (`/api/models/tiny/refs`) is no such route,
not a missing model: it read as the repo id `tiny/refs`, and huggingface_hub raised
RepositoryNotFoundError for a model the server holds."""

from __future__ import annotations

import pytest

from zoo.api import compress_into
from zoo.hub.store import Store

from tests.hub.test_serve import request, running_server


def test_an_unsupported_route_of_a_stored_one_segment_model_is_no_such_route(tiny_model, tmp_path):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "tiny")
    compress_into(store, tiny_model, "tiny/nested")
    with running_server(store) as url:
        status, headers, body = request(url, "/api/models/tiny/refs")
        assert status == 404 and "x-error-code" not in headers and b"no such route" in body
        api = HfApi(endpoint=url)
        for call in (lambda: api.list_repo_refs("tiny"), lambda: api.auth_check("tiny")):
            with pytest.raises(HfHubHTTPError) as raised:
                call()
            assert not isinstance(raised.value, RepositoryNotFoundError)
        # a two-segment model beside it is still itself, and a missing one is still RepoNotFound
        assert api.model_info("tiny/nested").id == "tiny/nested"
        assert request(url, "/api/models/nobody/refs")[1]["x-error-code"] == "RepoNotFound"
        # and a model under the stored one's name that is not here is missing, not a route: repo_exists says False
        assert request(url, "/api/models/tiny/other")[1]["x-error-code"] == "RepoNotFound"
        assert api.repo_exists("tiny/other") is False
