"""compress, decompress, info, verify."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from zoo.evaluate.result import QualityGateError, figure_text
from zoo.cli.eval_commands import MaxKl, MaxPplRatio, MinCosine, quality_check
from zoo.cli.options import ArchiveArg, Base, Force, ForceFiles, Json, Threads, refuse_stdout
from zoo.cli.output import human_bytes, print_json, progress_bar, source_bytes, stage_bars, stderr, stdout
from zoo.cli.reports import count, print_compressed, print_quality, print_report
from zoo.signals import an_output, written


def _codec_help() -> str:
    # Read at --help time only: the list comes from the codecs' own parameter declarations, so it never drifts.
    from zoo.codecs.base import LossyCodec
    from zoo.codecs.registry import CODECS
    from zoo.codecs.pipeline import ALIASES, GROUPING_FOR_BYTES

    lines = ["Codec ids (SPEC stages are 'id' or 'id:key=value,...', joined by '|'; lossy stages first, then one grouping "
             f"stage and at most one bytes stage: 'lossless' is added when none is given, '{GROUPING_FOR_BYTES}' before a "
             "bytes stage given alone):", ""]
    for alias, expansion in ALIASES.items():
        lines.append(f"  {alias}: {expansion}")
    for cls in CODECS:
        parameters = [param.usage() for param in cls.parameters()]
        if issubclass(cls, LossyCodec) and cls.needs_one_of:
            parameters.append(f"one of {' or '.join(cls.needs_one_of)} is needed")
        lines.append(f"  {cls.codec_id}: {'; '.join(parameters) or '(no parameters)'}")
    return "\n\n".join(lines)


def compress(
    typed: Annotated[str, typer.Argument(metavar="SOURCE", help="A model folder, a .safetensors/.bin/.pt file, or a hub id "
                                          "ORG/NAME[@REVISION].", show_default=False)],
    more: Annotated[Optional[list[str]], typer.Argument(metavar="SOURCE", help="More models, compressed side by side (each to its own "
                                                        "archive in the folder -o names, or into the zoo).", show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Write a standalone archive here instead of into the zoo "
                                                  "(with several SOURCEs, a URL, or a path ending in /: where the archives go, "
                                                  "each named after its source).", show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Name in the zoo (default: the hub id; for a folder, its name, or "
                                                "for a folder of a generic name such as `model` its config.json's _name_or_path).")] = None,
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="Codec pipeline SPEC (see below).")] = "lossless",
    budget: Annotated[Optional[str], typer.Option("--budget", help="Search l2's rate for the smallest archive keeping a quality: kl=0.005, "
                                                  "ppl-ratio=1.01 (causal LM), cosine=0.999 (encoder) or bpw=3.5 (best quality at that "
                                                  "size), judged on held-out text; needs -o. See docs/budget.md.", show_default=False)] = None,
    calib: Annotated[Optional[Path], typer.Option("--calib", help="Calibration text: its activations guide lossy stages such as codebook (bare --calib: the text zoo ships).",
                                                  show_default=False)] = None,
    base: Annotated[Optional[Path], typer.Option("--base", help="The model SOURCE was fine-tuned from. Into the zoo: a stored model, "
                                                 "whose tensors the source's are stored as XORs against where smaller (found from "
                                                 "config.json or the model card when not given). With -o and lossy stages: the tensors "
                                                 "they select are stored as differences from it.", show_default=False)] = None,
    no_delta: Annotated[bool, typer.Option("--no-delta", help="Into the zoo: store no tensor as an XOR against a base.")] = False,
    threads: Threads = None,
    force: Force = False,
    evaluate: Annotated[bool, typer.Option("--eval", help="Evaluate the result against the source (bit for bit when lossless, else "
                                                          "with zoo eval's figures) and store the figures in the archive.")] = False,
    verify: Annotated[bool, typer.Option("--verify", hidden=True, help="The old name of --eval.")] = False,
    max_kl: MaxKl = None,
    min_cosine: MinCosine = None,
    max_ppl_ratio: MaxPplRatio = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="A row per tensor in the size report, as zoo info shows it.")] = False,
    as_json: Json = False,
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="[ADDRESS]", help="Run each model as a task of -t CPUs (default 1) "
                                               "on the Ray cluster at ADDRESS (bare --ray: RAY_ADDRESS, else a Ray started here). See "
                                               "docs/scale-out.md.",
                                               show_default=False)] = None,
    include: Annotated[Optional[list[str]], typer.Option("--include", help="Only files whose path in the folder matches this glob "
                                                         "(repeatable).", show_default=False)] = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Leave out files matching this glob (repeatable).",
                                                         show_default=False)] = None,
    follow_links: Annotated[bool, typer.Option("--follow-links", help="Store what links leading out of the folder point to "
                                                                      "(refused otherwise).")] = False,
) -> None:
    """Compress a model into the zoo, or with -o into one .zoo archive. A quality gate implies
    --eval; when it trips, exit 1 and keep no archive."""
    from zoo import api
    from zoo.batch import archive_name
    from zoo.cli.zoo_commands import compress_elsewhere
    from zoo.codecs.pipeline import Pipeline
    from zoo.container.format import refuse_an_archive
    from zoo.errors import InputError
    from zoo.hub.remote import is_url
    from zoo.refs import looks_like_path

    # -o is text, not a Path, so that a URL keeps its `//` and a folder its trailing `/`; the check
    # app._GivenPath makes of paths is made here
    if output is not None and not output:
        raise InputError("--output is empty")
    if output is not None:
        refuse_stdout(output, "DIR/" if more else "OUT.zoo")
    if not typed or not all(more or []):  # Path("") is the current folder: an unset variable would compress it
        raise InputError("no model given: name a folder, a file or a hub id" if not more else
                         "an empty SOURCE among them: name a folder, a file or a hub id (an unset variable?)")
    # a URL is read or written by the batch's workers, Ray or not
    if more or ray is not None or (output is not None and is_url(output)) or is_url(typed):
        unsupported = {"--budget": budget, "--calib": calib, "--base": base, "--eval": evaluate or verify, "--max-kl": max_kl,
                       "--min-cosine": min_cosine, "--max-ppl-ratio": max_ppl_ratio, "--include": include, "--exclude": exclude,
                       "--follow-links": follow_links, "--verbose": verbose}
        why = ("several SOURCEs" if more else "--ray" if ray is not None else "an -o URL" if output is not None and is_url(output)
               else "a URL SOURCE")
        _compress_batch([typed, *(more or [])], output, name, pipeline, threads, force, as_json, ray,
                        [flag for flag, value in unsupported.items() if value], why, no_delta)
        return
    if output is not None and output.endswith(("/", os.sep)):  # `-o out/`: into that folder, as with several SOURCEs
        output = output + archive_name(typed)
    destination = None if output is None else Path(output)
    if destination is not None:
        an_output(destination)  # a signal once it is in place says so
    source = Path(typed)
    if not source.exists() and looks_like_path(typed):  # a mistyped path: said at once, never taken for a hub id
        raise InputError(f"{typed}: no such file or folder")
    if source.is_file():
        refuse_an_archive(source)  # before the name it would be stored under is announced
    if budget is not None:
        if include or exclude or follow_links:  # the search compresses and judges the whole folder
            raise InputError("--budget takes the whole model folder: leave out --include, --exclude and --follow-links")
        gated = evaluate or verify or any(gate is not None for gate in (max_kl, min_cosine, max_ppl_ratio))
        _compress_to_budget(source, destination, budget, pipeline, calib, base, threads, force, gated, as_json)
        _note_zoo_options(name, no_delta)
        return
    into_zoo = destination is None  # there --base names a stored model, and the result is bit-exact (XORs)
    if calib is not None and Pipeline.parse(pipeline).lossless:
        stderr.print("note: --calib tunes lossy stages; this pipeline has none, so the calibration text is not read", markup=False,
                     highlight=False)
    selection = {key: value for key, value in (("include", include), ("exclude", exclude), ("follow_links", follow_links or None))
                 if value is not None}
    check = quality_check(source, evaluate or verify, max_kl, min_cosine, max_ppl_ratio, None if into_zoo else base, quiet=as_json,
                          pipeline=pipeline, label="the compressed model" if into_zoo else output, selection=selection)
    options = {key: value for key, value in (("check", check), ("calibration", calib)) if value is not None} | selection
    if base is not None:
        options["base"] = str(base) if into_zoo else base
    if into_zoo and no_delta:
        options["delta"] = False
    try:
        # The phases before the first byte (calibrating, the l2 survey, tuning) get their own bars.
        with stage_bars(api.COMPRESS_STAGES, not as_json) as stage_progress:
            if stage_progress is not None:
                options["stage_progress"] = stage_progress
                if check is not None:
                    check.progress = stage_progress  # --eval's stages join the bars
            elsewhere = compress_elsewhere(typed, destination, name, pipeline, threads, force, as_json, verbose=verbose, **options)
            if not elsewhere:
                with progress_bar(lambda: source_bytes(source), "compressing", not as_json) as advance:
                    report = api.compress(source, destination, pipeline, threads=threads, force=force, progress=advance, **options)
        if elsewhere:  # its summary printed the figures --eval stored (print_report), as for -o
            if not into_zoo:  # a hub id pulled into an archive
                _note_zoo_options(name, no_delta)
            return
    except QualityGateError as error:
        if as_json:  # where it was going, and the figures where a kept archive's document has them (metadata.quality), as it stores them
            print_json({"kept": False, "output": output, "zoo": None if error.ref is None else {"ref": error.ref}, "error": str(error),
                        "metadata": {"quality": error.result.record()}})
        else:
            print_quality(error.result.to_dict(), f"quality, against {source}")
        raise
    print_compressed(report, as_json, verbose, destination)
    _note_zoo_options(name, no_delta)
    if base is not None and report.base is None:
        stderr.print(f"note: no tensor was stored against {base}: no lossy stage selected a tensor that it holds with the same name, "
                     "dtype and shape, both finite, so the archive does not need it", markup=False, highlight=False)


def _note_zoo_options(name: Optional[str], no_delta: bool) -> None:
    """After an archive was written with -o: the options that only storing into the zoo reads."""
    if no_delta:
        stderr.print("note: --no-delta applies to the zoo; an archive written with -o holds no XORs", markup=False, highlight=False)
    if name is not None:
        stderr.print("note: --name names a model in the zoo; an archive written with -o is known by its path", markup=False,
                     highlight=False)


def _compress_batch(sources: list[str], output: Optional[str], name: Optional[str], pipeline: str, threads: Optional[int], force: bool,
                    as_json: bool, ray: Optional[str], unsupported: list[str], why: str, no_delta: bool = False) -> None:
    """Several SOURCEs, --ray or an -o URL (`why`): zoo.batch runs one task per model; a line per
    model as it lands."""
    from zoo import batch
    from zoo.errors import InputError
    from zoo.hub.manifest import size_ratio
    from zoo.hub.remote import is_url, open_storage

    if unsupported:
        alone = {"an -o URL": "write the archive to a local path, then copy it",
                 "a URL SOURCE": "copy the model to a local folder first"}.get(why, "compress such a model on its own")
        raise InputError(f"{', '.join(unsupported)} {'is' if len(unsupported) == 1 else 'are'} not available with {why} yet: {alone}")
    if name is not None and len(sources) > 1:
        raise InputError("--name names one model: with several SOURCEs each is named after its folder")
    names = [name] if name is not None else None
    destination = output
    if output is not None and len(sources) == 1 and output.endswith(".zoo"):  # `-o model.zoo`: that archive, not a folder
        folder, _, file = output.rpartition("/") if is_url(output) else (str(Path(output).parent), "", Path(output).name)
        if is_url(output) and not is_url(folder):  # foo://x.zoo: the folder "foo:/" was taken for a local one
            raise InputError(f"{output}: the URL names no bucket or folder for the archive (s3://BUCKET/x.zoo)")
        destination, names = folder, [file]
    if destination is not None and (not is_url(destination) or destination.startswith("file://")):
        # the archives a signal that stops the batch names once they are in place: a task records
        # its own as it enters (zoo.signals), before the driver hears of it
        local = open_storage(destination).root
        for archive in names or [batch.archive_name(source) for source in sources]:
            an_output(local / archive)

    def landed(result: batch.Landed) -> None:
        advance(result.original_bytes)
        if result.ok and output is not None and not is_url(result.output):  # a Ray task's record was its worker's, not this process's
            written(result.output)
        if as_json:
            return
        if result.ok:
            spent = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in result.seconds.items())
            where = (f" in {result.tasks} tasks" if result.tasks > 1 else "") + (f" on node {result.node}" if result.node else "")
            stderr.print(f"landed {result.output}: {human_bytes(result.original_bytes)} -> {human_bytes(result.stored_bytes)} (ratio "
                         f"{size_ratio(result.stored_bytes, result.original_bytes):.3f}){where}; {spent}", markup=False, highlight=False,
                         soft_wrap=True)
            if result.opaque:  # as compress of one model says it
                stderr.print(f"  kept as bytes, not read as tensors: {'; '.join(result.opaque)}", markup=False, highlight=False, soft_wrap=True)
        else:
            stderr.print(f"failed {result.source}: {result.error}", markup=False, highlight=False, soft_wrap=True)

    with progress_bar(lambda: sum(source_bytes(Path(source)) for source in sources), "compressing", not as_json) as advance:
        results = batch.compress_many(sources, destination, names=names, pipeline=pipeline, threads=threads, force=force,
                                      ray=ray, on_landed=landed, delta=not no_delta)
    failed = [result for result in results if not result.ok]
    if as_json:
        print_json({"models": [result.to_dict() for result in results], "failed": len(failed)})
    else:
        stdout.print(f"{count(len(results), 'model')}: {len(results) - len(failed)} stored" + (f", {len(failed)} failed" if failed else ""),
                     markup=False, highlight=False)
    if failed:
        raise typer.Exit(1)


def _compress_to_budget(source: Path, output: Optional[Path], budget: str, pipeline: str, calib: Optional[Path], base: Optional[Path],
                        threads: Optional[int], force: bool, gated: bool, as_json: bool) -> None:
    """compress --budget: zoo.evaluate.budget searches the rate; a line per candidate on stderr."""
    from zoo import api
    from zoo.errors import InputError
    from zoo.evaluate.budget import SEARCH_STAGE, Budget, compress_to_budget

    parsed = Budget.parse(budget)  # a malformed budget fails before anything else is looked at
    if output is None:
        raise InputError("--budget writes a standalone archive: give -o OUT.zoo")
    if not source.exists():
        raise InputError(f"{source}: --budget needs a local model folder")
    if base is not None or gated:
        raise InputError("--budget is its own quality check: it takes neither --base nor --verify/--max-kl/--min-cosine/--max-ppl-ratio")

    def line(candidate) -> None:  # noqa: ANN001 - a zoo.evaluate.budget.Candidate
        if as_json:
            return
        figure = "" if candidate.figure is None else (f", {candidate.figure:.4f} with its proof stored" if parsed.name == "bpw"
                                                      else f", {parsed.name} {figure_text(candidate.figure, parsed.limit)}")
        verdict = "meets" if candidate.meets else "misses"
        stderr.print(f"candidate {candidate.pipeline.split('|')[0].split(',')[0]}: {human_bytes(candidate.bytes)}, "
                     f"{candidate.bits_per_weight:.3f} bits per weight{figure}: {verdict} {parsed}", markup=False, highlight=False,
                     soft_wrap=True)

    with stage_bars({**api.COMPRESS_STAGES, SEARCH_STAGE: "candidates"}, not as_json) as stage_progress:
        result = compress_to_budget(source, output, parsed, calibration=calib, leaf=pipeline, threads=threads, force=force,
                                    progress=stage_progress, on_candidate=line)
    print_compressed(result.report, as_json, True, output)  # --json: the document any kept archive gets


def decompress(
    archive: ArchiveArg,
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Folder to write the model into.")],
    base: Base = None,
    threads: Threads = None,
    force: ForceFiles = False,
    as_json: Json = False,
) -> None:
    """Write the model folder back out, checking every file's sha256."""
    from zoo import api

    an_output(output)

    with progress_bar(lambda: api.report_of(archive).original_bytes, "decompressing", not as_json) as advance:
        report = api.decompress(archive, output, threads=threads, force=force, progress=advance, base=base)
    if as_json:
        print_json({"output": str(output), "files": report.files, "original_bytes": report.original_bytes, "seconds": report.seconds})
    else:
        lossy = sum(not entry.get("lossless") for entry in report.files)
        checked = ("every file matches its sha256" if not lossy else
                   f"{count(lossy, 'file')} decoded from lossy stages, not held to the original's sha256" if lossy == len(report.files) else
                   f"every lossless file matches its sha256; {count(lossy, 'file')} decoded from lossy stages")
        stdout.print(f"{output}: {count(len(report.files), 'file')}, {human_bytes(report.original_bytes)}, {checked}", highlight=False)


def info(archive: ArchiveArg, as_json: Json = False) -> None:
    """Sizes per tensor and in total, of an archive or of a model in the zoo."""
    from zoo import api
    from zoo.cli.output import print_json
    from zoo.cli.reports import sharing_line

    from zoo.refs import archive_path

    report = api.report_of(archive)
    entry = None
    if archive_path(archive) != Path(archive):  # a zoo name: say what it shares with the other models there
        from zoo.hub.store import Store
        from zoo.refs import zoo_entry

        entry = zoo_entry(str(archive))
    if as_json and entry is not None:
        print_json({**report.to_dict(), "zoo": Store().sharing(entry)})
        return
    print_report(report, as_json, str(archive))
    if entry is not None:
        stdout.print(sharing_line(entry), markup=False, highlight=False)


def verify(archive: Annotated[Optional[Path], typer.Argument(help="A .zoo archive or a zoo name (none: the whole zoo, each "
                                                                   "object once).", show_default=False)] = None,
           base: Base = None, threads: Threads = None, as_json: Json = False) -> None:
    """Check every checksum and every lossless file's sha256; exit 1 if anything is damaged."""
    from zoo import api

    if archive is None:
        if base is not None:  # as compress's notes say what does nothing there
            stderr.print("note: --base applies to an archive; the zoo's models name their own bases", markup=False, highlight=False)
        _verify_zoo(threads, as_json)
        return

    from zoo.errors import FormatError, UnreadableError

    try:
        problems = api.verify(archive, threads=threads, base=base)
    except UnreadableError:  # no archive zoo reads (a folder, not a zoo archive, another format): an error, not damage
        raise
    except FormatError as error:  # too damaged to open (its header, cut short, a model's archive missing): damage, as the zoo's verify says
        problems = [str(error)]
    try:
        report = api.report_of(archive)
        needed = report.base
        # "ok" of such a file is of what is stored: decoding gives the kept values, not the original bytes its sha256 is of
        lossy = [entry["path"] for entry in report.files if not entry.get("lossless", True)]
    except FormatError:  # too damaged to open, one of the problems: nothing in it was checked, nor rebuilt
        needed, lossy = None, []
    # Without its base, an archive's differences are decoded and checked but not added to anything.
    unrebuilt = None if needed is None or base is not None else (
        f"{count(needed['tensors'], 'tensor')} stored as {'a difference' if needed['tensors'] == 1 else 'differences'} from "
        f"{needed['hint']!r} {'was' if needed['tensors'] == 1 else 'were'} checked as stored, not rebuilt "
        "(that needs --base)")
    if as_json:
        print_json({"archive": str(archive), "ok": not problems, "problems": problems, "not_rebuilt": unrebuilt, "lossy_files": lossy})
    elif problems:
        for problem in problems:
            stderr.print(f"damaged: {problem}", markup=False, highlight=False)
    else:
        kept = (f"{count(len(lossy), 'lossy file')} ({', '.join(lossy[:3])}{', ...' if len(lossy) > 3 else ''}) checked as stored: "
                f"{'it decodes' if len(lossy) == 1 else 'they decode'} to the values kept, not to the original bytes "
                f"{'its' if len(lossy) == 1 else 'their'} sha256 is of") if lossy else None
        stdout.print(f"{archive}: ok" + "".join(f"; {said}" for said in (unrebuilt, kept) if said), markup=False, highlight=False)
    if problems:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    import sys

    epilog = _codec_help() if "compress" in sys.argv and ("--help" in sys.argv or "-h" in sys.argv) else None
    app.command(epilog=epilog)(compress)
    app.command()(decompress)
    app.command()(info)
    app.command()(verify)


def _verify_zoo(threads: Optional[int], as_json: bool) -> None:
    from zoo.hub.store import Store
    from zoo.kernels.parallel import resolve_threads

    store = Store()
    objects, manifests, problems = store.verify(resolve_threads(threads))
    if as_json:
        print_json({"zoo": store.location, "objects": objects, "manifests": manifests, "ok": not problems,
                    "problems": problems})
    elif problems:
        for problem in problems:
            stderr.print(f"damaged: {problem}", markup=False, highlight=False, soft_wrap=True)
    else:
        stdout.print(f"{store.location}: {objects} objects and {manifests} manifests, ok", markup=False, highlight=False)
    if problems:
        raise typer.Exit(1)
