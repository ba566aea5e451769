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


def test_pulling_again_with_other_globs_stores_what_they_choose(hub, tmp_path):  # noqa: F811
    """A pull of the same commit with other --include/--exclude was answered "already in the zoo",
    keeping the files the first pull chose."""
    _, _, env = hub
    assert zoo_cli("pull", "org/tiny-bert", "--include", "*.json", env=env).returncode == 0
    first = {f.path for f in Store(tmp_path / "second").resolve("org/tiny-bert", with_files=True).files}
    done = zoo_cli("pull", "org/tiny-bert", env=env)
    assert done.returncode == 0 and "already" not in done.stdout + done.stderr, done.stdout + done.stderr
    whole = {f.path for f in Store(tmp_path / "second").resolve("org/tiny-bert", with_files=True).files}
    assert first < whole and "model.safetensors" in whole
    again = zoo_cli("pull", "org/tiny-bert", env=env)
    assert again.returncode == 0 and "already in the zoo" in again.stdout + again.stderr


def test_a_pull_whose_globs_choose_nothing_says_so_in_one_line(hub, tmp_path):  # noqa: F811
    _, _, env = hub
    done = zoo_cli("pull", "org/tiny-bert", "--include", "*.gguf", env=env)
    assert (done.returncode, done.stderr) == (1, "error: cannot pull org/tiny-bert@main: no file of it passes --include '*.gguf'\n")


def test_a_glob_ending_in_a_slash_is_the_folders_every_file_as_huggingface_hub_reads_it():
    from huggingface_hub.utils import filter_repo_objects

    from zoo.sources.folder import selected_by

    paths = ["sub/deep/x.json", "sub/y.bin", "top.json", "subway/z.txt"]
    for include, exclude in ((["sub/"], None), (None, ["sub/"]), (["*.json"], ["sub/"])):
        ours = [path for path in paths if selected_by(path, include, exclude)]
        assert ours == list(filter_repo_objects(paths, allow_patterns=include, ignore_patterns=exclude)), (include, exclude)
