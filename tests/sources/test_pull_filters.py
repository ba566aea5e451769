"""`zoo pull --include/--exclude` stores what the filters select, whatever the Hugging Face cache
already holds (a real zoo serve on 127.0.0.1 as the hub, the real huggingface_hub client)."""

from __future__ import annotations

from tests.hub.test_hub import hub, tiny_bert, zoo_cli  # noqa: F401 - fixtures
from zoo.hub.store import Store


def test_a_filtered_pull_stores_only_the_selected_files_of_a_full_cache(hub, tmp_path):  # noqa: F811
    _, _, env = hub
    assert zoo_cli("pull", "org/tiny-bert", "--name", "whole", env=env).returncode == 0  # the cache now holds every file
    done = zoo_cli("pull", "org/tiny-bert", "--include", "*.json", "--exclude", "tokenizer*", "--name", "configs", env=env)
    assert done.returncode == 0, done.stderr
    stored = [f.path for f in Store(tmp_path / "second").resolve("configs", with_files=True).files]
    assert stored and all(path.endswith(".json") and not path.startswith("tokenizer") for path in stored)
    whole = [f.path for f in Store(tmp_path / "second").resolve("whole", with_files=True).files]
    assert len(whole) > len(stored)


def test_a_glob_with_a_set_left_open_is_refused_before_anything_is_downloaded(hub, tmp_path):  # noqa: F811
    _, _, env = hub
    done = zoo_cli("pull", "org/tiny-bert", "--exclude", "tokenizer[.json", "--name", "open", env=env)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: --exclude 'tokenizer[.json' opens a '[' that no ']' closes"
    assert not (tmp_path / "hf").exists()  # huggingface_hub was never asked for anything
