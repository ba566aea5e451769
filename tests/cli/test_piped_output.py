"""Piped or in a file, the CLI's output is whole lines: a message is one line however long, a table
plain lines without a box (on a terminal, rich folds and boxes to its width)."""

from tests.cli.test_first_contact import _visible, ok, zoo_cli
from tests.conftest import damage_chunk, random_storage, write_safetensors

BOX = set("┏┃│━└")
TERMINAL = {"FORCE_COLOR": "1", "COLUMNS": "100"}  # stdout and stderr count as a terminal


def test_a_long_message_is_one_line_on_stderr(tiny_model, tmp_path):
    home = tmp_path / ("a-zoo-home-whose-path-alone-is-longer-than-the-eighty-columns-rich-assumes-when-piped" + "-" * 20)
    empty = ok(zoo_cli("ls", home=home))
    assert empty.stderr.count("\n") == 1 and f"the zoo at {home} is empty" in empty.stderr, empty.stderr

    archive = tmp_path / ("a-damaged-archive-whose-name-alone-is-longer-than-the-eighty-columns-rich-assumes" + "-" * 20 + ".zoo")
    ok(zoo_cli("compress", tiny_model, "-o", archive))
    damage_chunk(archive, "embed.weight", 0)
    damaged = zoo_cli("verify", archive)
    assert damaged.returncode == 1 and damaged.stderr.startswith("damaged: ")
    assert all(line.startswith("damaged: ") and len(line) > 80 for line in damaged.stderr.splitlines()), damaged.stderr

    missing = zoo_cli("verify", tmp_path / ("no-such-archive-" * 8 + ".zoo"), home=home)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and missing.stderr.startswith("error: "), missing.stderr


def test_bench_and_sweep_print_plain_lines_when_piped_and_boxes_on_a_terminal(tmp_path):
    weights = write_safetensors(tmp_path / "model.safetensors", {"layer.weight": ("F16", random_storage("F16", (64, 64)))})
    bench = ok(zoo_cli("bench", weights, "--dtype", "F16", "--repeat", "1"))
    lines = bench.stdout.splitlines()
    assert not BOX & set(bench.stdout), bench.stdout
    assert lines[0].startswith(f"{weights} · ") and lines[1].split()[:4] == ["dtype", "coder", "ratio", "vs"]
    assert lines[2].split()[:3] == ["F16", "zoo", "lossless"]
    assert "┃" in _visible(ok(zoo_cli("bench", weights, "--dtype", "F16", "--repeat", "1", env=TERMINAL)).stdout)

    sweep = ok(zoo_cli("sweep", weights, "-p", "truncate:bits=6", "-p", "lossless"))
    lines = sweep.stdout.splitlines()
    assert not BOX & set(sweep.stdout), sweep.stdout
    assert lines[1].split()[:3] == ["pipeline", "size", "bits/weight"]
    assert [line.split()[0] for line in lines[2:]] == ["truncate:bits=6", "lossless"]


def test_the_budget_trail_is_plain_lines_when_piped(capsys):
    from zoo.cli.reports import print_budget

    trail = [{"pipeline": f"l2:target_ratio={ratio}|lossless", "bytes": 1 << 20, "bits_per_weight": 16 / ratio, "figure": 0.01 * ratio,
              "meets": ratio < 8} for ratio in (4, 8)]
    print_budget({"budget": "kl<=0.05", "reads": "KL", "held_out": "text", "calibration": "shipped", "pipeline": trail[0]["pipeline"],
                  "trail": trail})
    shown = capsys.readouterr().out
    assert not BOX & set(shown), shown
    lines = shown.splitlines()
    assert lines[1] == "budget search, in the order tried" and lines[2].split() == ["candidate", "stored", "bits/weight", "figure", "meets"]
    assert [line.split()[0] for line in lines[3:]] == ["l2:target_ratio=4", "l2:target_ratio=8"]


def test_plain_table_columns_line_up_in_cells_as_printed(tmp_path):
    """A CJK tensor name took two cells a letter and one in the widths, so its row's columns stood
    three cells right of the others; under an ASCII locale the escapes stdout writes (层 as
    \\u5c42) widened cells after they were measured, and zoo's own × came out as \\xd7, read as a
    byte of a name that is not UTF-8. Now measured as printed, and × is x where it cannot be."""
    from rich.cells import cell_len

    weights = write_safetensors(tmp_path / "w.safetensors", {"层.权重": ("F32", random_storage("F32", (8, 8), 1)),
                                                              "plain.weight": ("F32", random_storage("F32", (4, 4), 2))})
    ok(zoo_cli("compress", weights, "-o", tmp_path / "w.zoo"))
    for env, name, shape in (({}, "层.权重", "8×8"), ({"PYTHONIOENCODING": "ascii"}, "\\u5c42.\\u6743\\u91cd", "8x8")):
        lines = ok(zoo_cli("info", tmp_path / "w.zoo", env=env)).stdout.splitlines()[1:4]
        assert [line.split()[:3] for line in lines] == [["tensor", "dtype", "shape"], ["plain.weight", "F32", "4" + shape[1] + "4"],
                                                         [name, "F32", shape]], lines
        # the dtype column starts in the same cell on every line, and every line ends in the same one
        assert len({cell_len(line[:line.index("dtype" if number == 0 else "F32")]) for number, line in enumerate(lines)}) == 1, lines
        assert len({cell_len(line) for line in lines}) == 1, lines
