"""An index that lags the manifests without a mark saying so (docs/STORE.md, *Reading*): a copy put
back, or a manifest deleted by hand. The manifests are the record; the index is made to agree."""

from __future__ import annotations

import shutil

import pytest

from zoo.api import compress_into
from zoo.errors import ZooWarning
from zoo.hub.store import Store

from tests.hub.test_dedup import base_tensors, write_model
from tests.hub.test_store_recovery import listed


@pytest.fixture
def two_models(tmp_path):
    store = Store(tmp_path / "zoo")
    compress_into(store, write_model(tmp_path / "a", base_tensors()), "a")
    compress_into(store, write_model(tmp_path / "b", base_tensors(seed=5)), "b")
    return store


def test_an_index_put_back_from_an_older_copy_is_rebuilt(two_models, tmp_path):
    """`zoo ls` listed a model removed since the copy was made and left out one stored since, and
    `zoo verify` said the zoo was sound: nothing marked the copy behind."""
    store = two_models
    shutil.copyfile(store.catalogue, tmp_path / "old.sqlite")
    store.remove("a")
    compress_into(store, write_model(tmp_path / "c", base_tensors(seed=9)), "c")
    shutil.copyfile(tmp_path / "old.sqlite", store.catalogue)
    assert listed(store.home) == ["b@main:lossless", "c@main:lossless"]
    assert [entry.name for entry in Store(store.home).entries()] == ["b", "c"]


def test_an_index_of_a_zoo_from_before_stamps_is_taken_as_it_is(two_models):
    """No stamp written yet: nothing to compare, and no rebuild on every open."""
    store = two_models
    store.stamp_path.unlink()
    identity = store.catalogue.stat().st_ino
    assert [entry.name for entry in Store(store.home).entries()] == ["a", "b"]
    assert store.catalogue.stat().st_ino == identity


@pytest.mark.parametrize("command", ["gc", "verify"])
def test_gc_and_verify_bring_the_index_to_a_manifest_deleted_by_hand(two_models, command):
    """`zoo gc` collected the objects of a model whose manifest was deleted by hand (no manifest
    names them: right) while `zoo ls` still listed the model, which then could not be read."""
    store = two_models
    store.manifest_path("b", "main", "lossless").unlink()
    with pytest.warns(ZooWarning, match=r"catalogue.sqlite: indexes 2 models where 1 manifests are; rebuilt from 1 manifests"):
        getattr(Store(store.home), command)()
    assert [entry.name for entry in Store(store.home).entries()] == ["a"]


def test_gc_takes_what_it_keeps_from_the_manifests_not_the_index(two_models, tmp_path):
    """An index put back that still lists a removed model keeps none of its objects, and one that
    lacks a model stored since loses none of that model's."""
    store = two_models
    shutil.copyfile(store.catalogue, tmp_path / "old.sqlite")
    store.remove("a")
    compress_into(store, write_model(tmp_path / "c", base_tensors(seed=9)), "c")
    shutil.copyfile(tmp_path / "old.sqlite", store.catalogue)
    Store(store.home).gc()
    assert Store(store.home).verify()[2] == []
    assert [entry.name for entry in Store(store.home).entries()] == ["b", "c"]


def test_verify_of_a_zoo_this_user_cannot_write_checks_no_index(tmp_path):
    """A zoo shipped as its objects and manifests, read-only (no work/, no catalogue): verify said
    ok before it compared the index with the manifests; then it tried to make the zoo's folders to
    rebuild one and failed (exit 1), and a user reading another's zoo was warned on every run that
    its index (its owner's alone) could not be opened. The index is the writer's to mend."""
    import os
    import subprocess
    import sys

    from tests.conftest import as_the_owner

    home = tmp_path / "zoo"
    compress_into(Store(home), write_model(tmp_path / "model", base_tensors()), "base")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for part in ("objects", "manifests"):
        shutil.copytree(home / part, shipped / part)
    for folder, folders, files in os.walk(shipped):
        for name in files + folders:
            os.chmod(os.path.join(folder, name), 0o555 if name in folders else 0o444)
    os.chmod(shipped, 0o555)
    try:
        done = subprocess.run(as_the_owner([sys.executable, "-m", "zoo", "verify"]), capture_output=True, text=True,
                              env={**os.environ, "ZOO_HOME": str(shipped)})
    finally:
        for folder, _, _ in os.walk(shipped):
            os.chmod(folder, 0o755)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    assert "ok" in done.stdout


def test_the_index_is_readable_by_every_user_of_the_zoo_as_its_manifests_are(two_models):
    """The catalogue was built as a temporary (0600) and renamed into place with that mode: another
    user of a shared zoo could read every manifest and object but not the index, and was served
    from the manifests on every command."""
    store = two_models
    [manifest] = (store.home / "manifests" / "a").rglob("*.json")
    assert store.catalogue.stat().st_mode & 0o777 == manifest.stat().st_mode & 0o777 == 0o644
    store.rebuild_index()
    assert store.catalogue.stat().st_mode & 0o777 == 0o644
