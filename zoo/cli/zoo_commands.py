"""pull, ls, rm, export, serve, doctor, gc: the zoo under ZOO_HOME."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from zoo.cli.options import Force, ForceFiles, Json, Threads, refuse_stdout
from zoo.cli.output import human_bytes, print_json, print_table, progress_bar, source_bytes, stage_bars, stderr, stdout
from zoo.cli.reports import count, print_compressed
from zoo.signals import an_output

NameArg = Annotated[str, typer.Argument(metavar="MODEL", help="A zoo name: NAME[@REVISION][:VARIANT] (see `zoo ls`).", show_default=False)]
Pipeline = Annotated[Optional[str], typer.Option("--pipeline", "-p", help="Codec pipeline SPEC (default: lossless).")]


def print_entry(entry, as_json: bool, new: bool) -> None:
    """A pull's result: `new` false where the zoo held that commit already (`new`, as in the
    `zoo` of compress's document; a batch's says `unchanged`)."""
    if as_json:
        print_json({**entry.to_dict(), "new": new})
    else:
        stdout.print(f"{'stored' if new else 'already in the zoo:'} {entry.ref}: {human_bytes(entry.original_bytes)} -> "
                     f"{human_bytes(entry.stored_bytes)} (ratio {entry.ratio:.3f})", markup=False, highlight=False)


def pull(
    repo: Annotated[str, typer.Argument(help="REPO_ID[@REVISION] on the hub (HF_ENDPOINT, default huggingface.co).", show_default=False)],
    more: Annotated[Optional[list[str]], typer.Argument(metavar="REPO", help="More repositories, pulled side by side.",
                                                        show_default=False)] = None,
    include: Annotated[Optional[list[str]], typer.Option("--include", help="Only files matching this glob (repeatable).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Skip files matching this glob (repeatable).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Name in the zoo (default: the repo id).")] = None,
    pipeline: Pipeline = None,
    threads: Threads = None,
    force: Force = False,
    as_json: Json = False,
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="[ADDRESS]", help="Pull each repository as a task of -t CPUs (default "
                                               "1) on the Ray cluster at ADDRESS (bare --ray: RAY_ADDRESS, else a Ray started here).",
                                               show_default=False)] = None,
) -> None:
    """Download a model from the hub, check each file against what the hub lists, store it compressed."""
    from zoo import api
    from zoo.hub.pull import pull as pull_model

    if more or ray is not None:
        _pull_batch([repo, *(more or [])], include, exclude, name, pipeline, threads, force, as_json, ray)
        return

    # a lossy pipeline's survey runs before the first byte: its phases get bars of their own
    with stage_bars(api.COMPRESS_STAGES, not as_json) as stage_progress:
        options = {} if stage_progress is None else {"stage_progress": stage_progress}
        # huggingface_hub's download bars only where a person watches: piped, they are lines of \r
        entry, new = pull_model(repo, name=name, pipeline=pipeline, include=include, exclude=exclude, threads=threads, force=force,
                                progress=lambda total: progress_bar(total, "compressing", not as_json),
                                progress_bars=not as_json and stderr.is_terminal, **options)
    print_entry(entry, as_json, new)


def _pull_batch(refs: list[str], include: Optional[list[str]], exclude: Optional[list[str]], name: Optional[str], pipeline: Optional[str],
                threads: Optional[int], force: bool, as_json: bool, ray: Optional[str]) -> None:
    """Several repositories, or --ray: zoo.batch.pull_many, a line per model as it lands."""
    from zoo import batch
    from zoo.errors import InputError
    from zoo.hub.manifest import size_ratio

    if name is not None and len(refs) > 1:
        raise InputError("--name names one model: with several repositories each is named after its repository id")

    def landed(result: batch.Landed) -> None:
        if as_json:
            return
        if not result.ok:
            line = f"failed {result.source}: {result.error}"
        elif result.unchanged:
            line = f"already in the zoo: {result.output} (commit {result.commit[:12]})"
        else:
            line = (f"stored {result.output}: {human_bytes(result.original_bytes)} -> {human_bytes(result.stored_bytes)} (ratio "
                    f"{size_ratio(result.stored_bytes, result.original_bytes):.3f})" + (f" on node {result.node}" if result.node else ""))
        stderr.print(line, markup=False, highlight=False, soft_wrap=True)

    results = batch.pull_many(refs, names=[name] if name else None, pipeline=pipeline, include=include, exclude=exclude, ray=ray,
                              threads=threads, force=force, on_landed=landed)
    failed = [result for result in results if not result.ok]
    if as_json:
        print_json({"models": [result.to_dict() for result in results], "failed": len(failed)})
    else:
        stdout.print(f"{len(results)} repositories: {len(results) - len(failed)} in the zoo" + (f", {len(failed)} failed" if failed else ""),
                     markup=False, highlight=False)
    if failed:
        raise typer.Exit(1)


def ls(as_json: Json = False) -> None:
    """Every model in the zoo, with sizes and quality when known."""
    from zoo.hub.store import Store, base_standing, quality_label

    store = Store()
    entries = store.entries()
    commits = {e.ref: e.commit for e in entries}

    def label(e) -> str:  # noqa: ANN001 - an Entry
        if not e.base:
            return quality_label(e)
        standing = base_standing(e.base, commits)
        against = f"{e.base['ref']}{', ' + standing if standing else ''}"
        return quality_label(e) + f" (XOR of {count(e.base['tensors'], 'tensor')} against {against})"

    if as_json:
        print_json({"zoo": store.location, "total_bytes": store.total_bytes(),
                    "models": [{**e.to_dict(), "quality_label": label(e)} for e in entries]})
        return
    if not entries:
        said = (f"the zoo at {store.location} lists no model, but holds manifests it cannot read: `zoo doctor` says which"
                if store.holds_manifests() else
                f"the zoo at {store.location} is empty: `zoo pull REPO_ID` or `zoo compress FOLDER` fill it")
        stderr.print(said, markup=False, highlight=False)
        return
    # stored: what the model takes on its own (as one archive would); adds: what it adds to this zoo,
    # the objects no other model names (what `zoo rm` of it frees)
    rows = [[e.name, e.revision, e.variant, human_bytes(e.original_bytes), human_bytes(e.stored_bytes),
             human_bytes(e.adds_bytes if e.adds_bytes is not None else e.stored_bytes), f"{e.ratio:.3f}",
             label(e)]
            for e in entries]
    total = store.total_bytes()
    print_table(f"{store.location}: {human_bytes(total)} in all", ["name", "revision", "variant", "original", "stored", "adds", "ratio", "quality"],
                rows, ("original", "stored", "adds", "ratio"), fold=("variant", "quality"))


def rm(
    ref: NameArg,
    every: Annotated[bool, typer.Option("--all", help="Remove every entry the name matches (all revisions and variants).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Remove a model others are stored against too (its name only: the "
                                        "objects they need stay).")] = False,
    as_json: Json = False,
) -> None:
    """Remove a model from the zoo; what no other model needs is deleted with it."""
    from zoo.errors import InputError
    from zoo.hub.store import Store
    from zoo.refs import not_found

    store = Store()
    if not ref or not store.matches(ref):  # every variant the name matches, lossy ones too (not zoo_entry's lossless one)
        raise InputError(not_found(ref) if ref else "no model given: name a model in the zoo (see `zoo ls`)")
    removed = store.remove(ref, every, force)
    if as_json:
        print_json({"removed": [e.to_dict() for e in removed]})
    else:
        for entry in removed:
            stdout.print(f"removed {entry.ref}", markup=False, highlight=False)


def export(
    ref: NameArg,
    output: Annotated[str, typer.Option("--output", "-o", help="Folder to write the plain Hugging Face model into; with --archive the "
                                         "archive's path, or a folder ending in / to write NAME.zoo into.")],
    threads: Threads = None,
    force: ForceFiles = False,
    archive: Annotated[bool, typer.Option("--archive", help="Write one .zoo archive that stands alone instead (the objects "
                                          "it needs copied in, as coded).")] = False,
    as_json: Json = False,
) -> None:
    """Write a stored model out as a plain Hugging Face folder (bit-exact for lossless variants)."""
    from zoo import api
    from zoo.errors import InputError
    from zoo.refs import zoo_entry

    if not output:  # text, for its trailing `/`: "" would be the current folder (an unset variable), as compress -o refuses it
        raise InputError("--output is empty")
    refuse_stdout(output, "OUT.zoo" if archive else "DIR")
    if "://" in output:  # text, so the check every path parameter makes (zoo.cli.app._GivenPath) is made here
        from zoo.hub.remote import is_url

        if is_url(output):
            raise InputError(f"--output {output}: a URL, where this command takes a local path")
    entry = zoo_entry(ref)
    if archive and output.endswith(("/", os.sep)):  # into that folder, as compress -o DIR/ writes
        output = os.path.join(output, f"{entry.name.rsplit('/', 1)[-1]}.zoo")
    an_output(output)  # a signal once it is in place says so
    if archive:
        report = api.export_archive(entry.archive, output, force=force)
        if as_json:
            print_json({"name": entry.ref, "output": str(output), "compressed_bytes": report.compressed_bytes})
        else:
            stdout.print(f"{output}: {entry.ref} as one archive, {human_bytes(report.compressed_bytes)}", markup=False, highlight=False)
        return
    with progress_bar(entry.original_bytes, "exporting", not as_json) as advance:
        report = api.decompress(entry.archive, output, threads=threads, force=force, progress=advance)
    if as_json:
        print_json({"name": entry.ref, "output": str(output), "files": report.files, "original_bytes": report.original_bytes})
    else:
        stdout.print(f"{output}: {entry.ref}, {count(len(report.files), 'file')}, {human_bytes(report.original_bytes)}", markup=False,
                     highlight=False)


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")] = 8000,
    token: Annotated[Optional[str], typer.Option("--token", help="Require this bearer token (clients set HF_TOKEN); "
                                                 "default ZOO_SERVE_TOKEN.")] = None,
    threads: Annotated[int, typer.Option("--threads", "-t", min=1, help="Decode threads per download (more: faster "
                                         "single downloads of slow codecs, 4 chunks more memory per thread each).")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not log each request.")] = False,
    root_path: Annotated[str, typer.Option("--root-path", help="The path prefix a reverse proxy in front strips "
                                           "(/zoo for clients whose HF_ENDPOINT is https://HOST/zoo).")] = "",
) -> None:
    """Serve every model in the zoo over the Hugging Face Hub API: HF_ENDPOINT=http://HOST:PORT."""
    from zoo.hub.serve import is_loopback, make_server
    from zoo.hub.store import Store

    token = token if token is not None else os.environ.get("ZOO_SERVE_TOKEN")
    store = Store()
    server = make_server(store, host, port, token, quiet, threads, root_path=root_path)
    if not is_loopback(host) and token is None:
        stderr.print(f"warning: serving on {host} without a token: anyone who reaches it can read every model", markup=False)
    names = sorted({e.name for e in store.entries()})
    clients = f"PROXY{root_path.rstrip('/')}, the proxy's URL" if root_path.rstrip("/") else server.url
    stderr.print(f"serving {count(len(names), 'model')} from {store.location} at {server.url} (clients: HF_ENDPOINT={clients})",
                 markup=False, highlight=False, soft_wrap=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def doctor(as_json: Json = False) -> None:
    """Check the zoo and repair what can be repaired without losing anything (the catalogue is
    rebuilt from the manifests; a zoo of the old layout is migrated): one line per finding; exit 1
    while a model cannot be read (an object missing or of the wrong size, a manifest lost). On a
    bucket: this machine's index rebuilt, the bucket checked, nothing in it written or deleted."""
    from zoo.hub.manifest import Damage
    from zoo.hub.store import Store

    store = Store()
    findings = store.doctor()
    damage = [line for line in findings if isinstance(line, Damage)]
    if as_json:
        print_json({"zoo": store.location, "findings": findings, "unrepaired": damage})
    else:
        for line in findings:
            stdout.print(line, markup=False, highlight=False, soft_wrap=True)
    if damage:
        raise typer.Exit(1)


def gc(as_json: Json = False) -> None:
    """Remove the stored objects that no model names any more (left by a killed writer)."""
    from zoo.hub.store import Store

    store = Store()
    removed = store.gc()
    if as_json:
        print_json({"zoo": store.location, "removed": [{"object": str(path), "bytes": size} for path, size in removed]})
    else:
        for path, size in removed:
            stderr.print(f"removed {path} ({human_bytes(size)})", markup=False, highlight=False, soft_wrap=True)
        stdout.print(f"removed {len(removed)} object{'' if len(removed) == 1 else 's'}, {human_bytes(sum(size for _, size in removed))}",
                     markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(pull)
    app.command(name="ls")(ls)
    app.command(name="rm")(rm)
    app.command()(export)
    app.command()(serve)
    app.command()(doctor)
    app.command()(gc)


def compress_elsewhere(source: str, output: Optional[Path], name: Optional[str], pipeline: str, threads: Optional[int], force: bool,
                       as_json: bool, verbose: bool = False, **options: Any) -> bool:
    """The parts of `zoo compress` that involve the zoo: no -o stores the result in the zoo, and a
    SRC that is no local path is a hub id, pulled first. False: a plain file-to-archive job.
    `options` (calibration=, check=, ...) go to zoo.compress."""
    from zoo import api
    from zoo.codecs.pipeline import Pipeline
    from zoo.hub import pull as hub
    from zoo.hub.store import Store, check_name
    from zoo.refs import model_name

    local = Path(source)
    if local.exists() and output is not None:
        return False
    if not local.exists():
        try:
            return _compress_from_hub(source, output, name, pipeline, threads, force, as_json, verbose, **options)
        except hub.PullError as error:
            raise hub.PullError(f"{error} (nor is there a local file or folder {source!r})") from None
    if name is None:
        name, origin = model_name(local)
        check_name(name)  # a name or a SPEC the zoo refuses is said before the name is announced
        Pipeline.parse(pipeline)
        if not as_json:
            stderr.print(f"storing it as {name} ({origin}; --name chooses another)", markup=False, highlight=False, soft_wrap=True)
    with progress_bar(lambda: source_bytes(local), "compressing", not as_json) as advance:
        entry = api.compress_into(Store(), local, check_name(name), pipeline=pipeline, source_label=str(local.resolve()),
                                  force=force, threads=threads, progress=advance, **options)
    print_compressed(api.report_of(entry.archive), as_json, verbose, entry=entry)
    return True


def _compress_from_hub(source: str, output: Optional[Path], name: Optional[str], pipeline: str, threads: Optional[int], force: bool,
                       as_json: bool, verbose: bool, **options: Any) -> bool:
    from zoo import api
    from zoo.hub import pull as hub

    if output is None:
        entry, new = hub.pull(source, name=name, pipeline=pipeline, threads=threads, force=force,
                              progress=lambda total: progress_bar(total, "compressing", not as_json),
                              progress_bars=not as_json and stderr.is_terminal, **options)
        print_compressed(api.report_of(entry.archive), as_json, verbose, entry=entry, new=new)
        return True
    repo_id, revision = hub.parse_repo_ref(source)
    pulled = hub.download(repo_id, revision, progress_bars=not as_json and stderr.is_terminal)
    their_check = options.pop("check", None)

    def check(archive: Path) -> None:
        # before the archive replaces `output`: a faithful archive of a bad download is still bad,
        # and a failed check must leave the old output where it was
        hub.check_lfs(archive, pulled, repo_id)
        if their_check is not None:
            their_check(archive)

    with progress_bar(lambda: source_bytes(pulled.folder), "compressing", not as_json) as advance:
        report = api.compress(pulled.folder, output, pipeline, threads=threads, force=force, progress=advance,
                              metadata={"source": f"hub:{repo_id}@{pulled.commit}"}, check=check, **options)
    print_compressed(report, as_json, verbose, output)
    return True
