"""A file named as a Windows drive (`a:b.txt`) is a valid POSIX name, kept by compress and given
back by export; huggingface_hub refuses to write it anywhere, so serve leaves it out of what it
lists: listed, it failed the whole snapshot_download."""

from __future__ import annotations

import shutil
from pathlib import Path

from zoo.api import compress_into
from zoo.hub.store import Store

from tests.hub.test_serve import running_server


def test_a_drive_like_name_is_kept_in_the_zoo_and_left_out_of_what_serve_lists(tiny_model, tmp_path, capfd):
    from huggingface_hub import HfApi, snapshot_download

    folder = tmp_path / "odd"
    shutil.copytree(tiny_model, folder)
    (folder / "a:b.txt").write_text("colon\n")
    store = Store(tmp_path / "zoo")
    entry = compress_into(store, folder, "odd")
    assert "a:b.txt" in {f.path for f in entry.files}  # every file of the folder survives
    with running_server(store, quiet=False) as url:
        assert "a:b.txt" not in {s.rfilename for s in HfApi(endpoint=url).model_info("odd").siblings}
        snapshot = Path(snapshot_download("odd", endpoint=url, cache_dir=tmp_path / "hf"))
        assert (snapshot / "config.json").read_bytes() == (tiny_model / "config.json").read_bytes()
        HfApi(endpoint=url).model_info("odd")  # the note is logged once
    notes = [line for line in capfd.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "'a:b.txt'" in notes[0]
