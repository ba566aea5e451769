"""The local zoo: immutable objects named by their sha256, one manifest per stored model variant,
and an SQLite index of the manifests. docs/STORE.md specifies the layout::

    ZOO_HOME/objects/sha256/AB/ABCDEF....zoo      archives, named by the sha256 of their bytes
    ZOO_HOME/manifests/NAME/REVISION/VARIANT.json  what a model is: its object, files, commit, quality
    ZOO_HOME/catalogue.sqlite                     an index of the manifests (zoo.hub.catalogue)
    ZOO_HOME/work/<job>/                          temporary work, each folder locked by its process
    ZOO_HOME/lock                                 held while a manifest is published or objects collected

A model enters in order: its object (written in a work folder, fsynced, renamed in), then its
manifest (written under a locked temporary name, fsynced, renamed over), then the index. A reader
never sees half a model, a killed writer leaves at worst an object no manifest names (only `zoo gc`
removes those) or an index behind the manifests (rebuilt on the next read).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import struct
import tempfile
import time
import warnings
from collections.abc import Collection, Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

from zoo.container import format as format_module
from zoo.container.format import FEATURES_VERSION, PREAMBLE, object_path, sha256_file
from zoo.container.objects import ObjectSink, object_names, object_problems
from zoo.errors import InputError, MissingObjectError, OutputExistsError, ZooError, ZooWarning
from zoo.hub import catalogue
from zoo.hub.manifest import (
    DEFAULT_REVISION, LEGACY_NAME, LFS_MIN_BYTES, LOSSLESS, NAME_PATTERN, OBJECT_SUFFIX, Damage, Entry, StoredFile, check_name,
    check_record, check_revision, describe_files, git_blob_hasher, human_size, legacy_records, lfs_pointer, manifest_component,
    base_standing, canonical_variant, needs_damaged, parse_ref, quality_label, readable, record_names, record_of, refuse_names_not_utf8,
    stored_against, variant_match, variant_of,
)
from zoo.hub.remote import StorageError, index_home, is_url, object_keys
from zoo.hub.remote.folder import fsync_path
from zoo.hub.temporaries import kill_point, locked_temporary, sweep_beside, temporary_prefix
from zoo.signals import removed, signals_held, stored

# What callers (serve, pull, api, the CLI) import from here, as before the manifests had a module.
__all__ = ["DEFAULT_REVISION", "LFS_MIN_BYTES", "LOSSLESS", "NAME_PATTERN", "Entry", "Store", "StoreError", "StoredFile", "base_standing",
           "check_name", "check_revision", "git_blob_hasher", "lfs_pointer", "parse_ref", "quality_label", "require_archive", "resolve_archive",
           "variant_match", "variant_of", "zoo_home"]


def zoo_home() -> Path:
    """ZOO_HOME, or zoo/ under the user's cache folder (XDG_CACHE_HOME, else ~/.cache) where it is
    unset, empty or blank (a folder named " " is no one's choice)."""
    if os.environ.get("ZOO_HOME", "").strip():
        return Path(os.environ["ZOO_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "zoo"


_JOB_FOLDER = re.compile(r"job-[a-z0-9_]{8}")  # what workspace()'s mkdtemp names: no one's job-applications/


class StoreError(ZooError):
    """The zoo's own files cannot be read or written (disk full, permissions, a damaged manifest)."""


class NotAZooError(StoreError):
    """ZOO_HOME names a folder of someone's files, not a zoo: no reader falls back to its manifests."""


# What a zoo makes in its folder, the old layout's archives/ among them (docs/STORE.md).
_MADE_BY_A_ZOO = {"objects", "manifests", "work", "lock", "unreadable", "catalogue.sqlite", "catalogue.behind", "catalogue.stamp",
                  "archives", "manifest.versions"}
_STAMP_TABLE = "zoo_stamp"  # a table of the index's own (zoo.hub.catalogue's schema knows nothing of it): Store._stamp


def _archive_of(record: dict[str, Any]) -> str:
    """The object that is a manifest's archive (its role "archive")."""
    return next(o["sha256"] for o in record["objects"] if o["role"] == "archive")


def _claimed_record(path: Path) -> dict[str, Any]:
    """The manifest record of the model whose archive `path` is, as its header's metadata claims
    it (compress_into writes it; created: the file's age). KeyError or TypeError where the header
    names no model, ZooError or OSError where it cannot be read."""
    metadata, files = describe_files(path)
    claimed = metadata.get("zoo") if isinstance(metadata.get("zoo"), dict) else {}
    return record_of(metadata, files, check_name(claimed["name"]), check_revision(claimed.get("revision") or DEFAULT_REVISION),
                     claimed.get("commit"), metadata.get("source"), path.stat().st_mtime)


def _sync_files(paths: list[Path]) -> None:
    """Make files (or folders' entries) durable: one syncfs(2) of their file system where Linux has
    it, else an fsync each."""
    if not paths:
        return
    try:
        import ctypes

        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
        descriptor = os.open(paths[0], os.O_RDONLY)
        try:
            if syncfs(descriptor) == 0 and all(os.stat(p).st_dev == os.fstat(descriptor).st_dev for p in paths):
                return
        finally:
            os.close(descriptor)
    except (OSError, AttributeError):
        pass
    for path in paths:
        fsync_path(path)


def with_chained_needs(base: Any, records: dict[str, dict[str, Any]]) -> Any:
    """A manifest's base record with its `needs` checked against the chain of bases its models'
    manifests (`records`, by ref) say: before 2026-12-05 23:00 a fine-tune's needs listed every
    model that named its chains' objects, a sibling fine-tune among them, and until 2026-12-06 a
    fine-tune of such a one copied the list (with commits). A recorded need that is neither on the
    chain nor gone from the zoo is such a sibling, and is left out: zoo rm of it was refused."""
    if not isinstance(base, dict):
        return base
    chain, ref = [], base.get("ref")
    commits = base.get("commits") if isinstance(base.get("commits"), dict) else {}
    while isinstance(ref, str) and ref not in chain:
        chain.append(ref)
        record = records.get(ref) or {}
        if ref in commits and record.get("commit") != commits[ref]:
            # replaced since (--force): its manifest now says nothing of the chain these tensors were
            # stored on, so the recorded needs stand whole (read through it, `zoo rm` let go of a base below)
            return {**base, "needs": base.get("needs") or chain[:1]}
        below = record.get("base")
        ref = below.get("ref") if isinstance(below, dict) else None
    recorded = base.get("needs") or chain[:1]
    return {**base, "needs": [need for need in recorded if need in chain or need not in records]}


class Store:
    """The zoo at `home` (default: zoo_home()). Every method opens what it needs itself, so one
    Store may be used from many threads and by several processes at once."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        location = str(home) if home is not None else os.environ.get("ZOO_HOME", "")
        self.storage: Any = None  # where the objects and manifests live when that is not this folder
        self.url: str | None = None
        if re.match(r"[A-Za-z][\w+.-]*::", location) and "://" in location:  # simplecache::s3://...: a local folder `simplecache::s3:`
            raise StorageError(f"{location}: a chained fsspec URL; a zoo lives in a folder or at one URL (s3://BUCKET/PATH)")
        if location.startswith("file://"):
            home = location[len("file://"):]
            if not home.strip("/"):
                raise StorageError(f"{location}: the URL names no folder")
        elif is_url(location):
            from zoo.hub.remote import open_storage

            # the zoo lives at the URL; this machine keeps its index, work and the archives of its models
            self.url, self.storage = location.rstrip("/"), open_storage(location)
            home = index_home(location)
            _REMOTE_ZOOS[home / "objects" / "sha256"] = self.storage
            format_module.REMOTE_OBJECTS = _remote_object
        self._synced = -1e9
        # absolute from the start: a process that changes its folder later (os.chdir) still reads this zoo
        self.home = (Path(home) if home is not None and str(home) else zoo_home()).absolute()
        self.catalogue = self.home / "catalogue.sqlite"
        self.objects = self.home / "objects" / "sha256"
        self.manifests = self.home / "manifests"
        self.work = self.home / "work"
        self.archives = self.home / "archives"  # the layout before manifests: migrated on first open
        self.lock_path = self.home / "lock"
        self.dirty = self.home / "catalogue.behind"  # exists while the index may lag the manifests
        self.stamp_path = self.home / "catalogue.stamp"  # the stamp the index holds where it is current (_stamp_holds)
        self.versions_path = self.home / "manifest.versions"  # a bucket zoo's: the versions of the manifests copied here

    # -- layout -----------------------------------------------------------------------------

    @property
    def location(self) -> str:
        """What the user calls this zoo: its URL when it lives in a bucket, else its folder."""
        return self.url or str(self.home)

    def _check_home(self) -> None:
        if self.home.exists() and not self.home.is_dir():
            raise StoreError(f"{self.home}: is a file, not a zoo's folder (check ZOO_HOME)")

    def exists(self) -> bool:
        self._check_home()
        self._sync()
        self._refuse_a_foreign_folder()  # a folder of the user's own (its manifests/ too) is no zoo, not an empty one to fill
        return self.manifests.is_dir() or self.catalogue.exists() or self.archives.is_dir()

    def object_path(self, sha256: str) -> Path:
        return object_path(self.objects, sha256)

    def object_key(self, name: str) -> str:
        """Where the object `name` lives in the zoo's storage: its path under the zoo's root."""
        return self._relative(self.object_path(name))

    def existing_object(self, name: str, archive: bool = False) -> Path | None:
        """The object of that name when the zoo holds it (what a build may reuse instead of coding);
        on object storage it is fetched into this machine's folder first. A model's `archive` (named
        by the sha256 of its bytes) of object storage is held to its name, this machine's copy too:
        one damaged here, or fetched unchecked by an older zoo, is fetched again. Any other copy
        this machine holds is held to the bucket's object (_coded_as_in_the_bucket): the object may
        have been collected since and stored again by another pipeline, under the same name."""
        path = self.object_path(name)
        if path.is_file():
            if self.storage is None or (sha256_file(path) == name if archive else self._coded_as_in_the_bucket(name, path)):
                return path
            path.unlink(missing_ok=True)  # not the bucket's bytes: the bucket's fetched instead
            format_module.object_replaced(path)
        if self.storage is None or self.storage.stat(self._relative(path)) is None:
            return None
        try:
            return self._fetch(self._relative(path), path, archive)
        except FileNotFoundError:  # collected by a gc since the look: the build codes it anew
            return None

    def _coded_as_in_the_bucket(self, name: str, path: Path) -> bool:
        """Whether the object file at `path` is coded as the bucket's object `name` is: the same size
        and the same header, whose record of the tensor pins the payload's layout (its chunk index
        by its CRC-32) and which the shells naming the object copy. A lossless tensor's object is
        named by what it decodes to, so another pipeline's coding has the same name. One range
        read of the header; a header this file lacks is no match."""
        from zoo.container.format import PREAMBLE

        key = self.object_key(name)
        try:
            with open(path, "rb") as stream:
                preamble = stream.read(PREAMBLE.size)
                head = preamble + stream.read(PREAMBLE.unpack(preamble)[3])
                size = os.fstat(stream.fileno()).st_size
        except (OSError, struct.error):
            return False
        info = self.storage.stat(key)
        return info is not None and info.size == size and self.storage.read_range(key, 0, len(head)) == head

    def _fetch(self, key: str, path: Path, archive: bool = False) -> Path:
        """A key of the zoo's storage copied whole to `path` (a temporary name first). An `archive`
        is checked against its name first: one damaged in the bucket kept here would be read by this
        machine for good, the bucket mended or not."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked_temporary(path.parent, temporary_prefix(path), is_dir=False) as temporary:
            self.storage.download(key, temporary)
            if archive and sha256_file(temporary) != path.name.removesuffix(OBJECT_SUFFIX):
                raise StoreError(f"{self.url}/{key}: damaged in the bucket (its bytes do not hash to its name); not kept on this "
                                 "machine (`zoo verify` names its model; storing that again mends it)")
            os.replace(temporary, path)
        return path

    # -- a zoo on object storage ------------------------------------------------------------

    def _sync(self) -> None:
        """Bring this machine's copy of a remote zoo's manifests (and its models' archives) up to
        date with the storage, at most every SYNC_SECONDS; the index follows (catalogue.behind)."""
        if self.storage is None or time.monotonic() - self._synced < SYNC_SECONDS:
            return
        self._make_folders()
        remote = {info.key: info for info in self.storage.list("manifests/") if info.key.endswith(".json")}
        changed = False
        with self._locked():
            # A copy is current when its size, age and version (an S3 ETag) are the bucket's: an age
            # counts whole seconds there, and a model replaced by one of the same size within the
            # second this machine read it in was kept, stale, until the manifest changed again.
            versions = self._manifest_versions()
            known = dict(versions)
            for key, info in remote.items():
                path = self.home / key
                if path.is_file() and path.stat().st_size == info.size and path.stat().st_mtime == info.modified \
                        and versions.get(key) == info.version:
                    continue
                data = self.storage.read(key)
                path.parent.mkdir(parents=True, exist_ok=True)
                with locked_temporary(path.parent, temporary_prefix(path), is_dir=False) as temporary:
                    temporary.write_bytes(data)
                    os.utime(temporary, (info.modified, info.modified))
                    os.replace(temporary, path)
                versions[key] = info.version
                changed = True
            for path in self._manifest_files():
                if self._relative(path) not in remote:
                    path.unlink()
                    changed = True
            versions = {key: version for key, version in versions.items() if key in remote and version is not None}
            if versions != known:
                self._write_manifest_versions(versions)
            if changed:
                self.dirty.touch()
            for _, record in self._all_manifests():
                for item in record["objects"]:
                    if item["role"] == "archive" and not self.object_path(item["sha256"]).is_file():
                        with suppress(ZooError, OSError):  # a damaged one is said by the command that reads it
                            self._fetch(self._relative(self.object_path(item["sha256"])), self.object_path(item["sha256"]), archive=True)
        self._synced = time.monotonic()

    def _manifest_versions(self) -> dict[str, str]:
        """The version (an S3 ETag) of each manifest this machine copied from the bucket, by key;
        none known where the file is missing or unreadable (each manifest is then read again)."""
        try:
            versions = json.loads(self.versions_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return versions if isinstance(versions, dict) else {}

    def _write_manifest_versions(self, versions: dict[str, str]) -> None:
        with locked_temporary(self.home, temporary_prefix(self.versions_path), is_dir=False) as temporary:
            temporary.write_text(json.dumps(versions, sort_keys=True), encoding="utf-8")
            os.replace(temporary, self.versions_path)

    def _publish_remote(self, record: dict[str, Any], moves: dict[str, Path], force: bool, repairs: Collection[str]) -> None:
        """Objects put first (each under its name, if absent), the manifest last, by a conditional
        put: only where there is none, or, with `force`, where it is the one read before."""
        from zoo.hub.remote import ABSENT, PublishConflict

        ref = f"{record['name']}@{record['revision']}:{record['variant']}"
        manifest = self.manifest_path(record["name"], record["revision"], record["variant"])
        key = self._relative(manifest)
        old = self.storage.read_versioned(key)
        if old is not None and not force:
            raise OutputExistsError(f"{ref} is already in the zoo; pass --force to replace it")
        moves = self.put_model(record, moves, repairs)
        archive = _archive_of(record)
        kill_point("store-object")
        data = (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()
        try:
            self.storage.publish(key, data, expect=old[1] if old is not None else ABSENT)
        except PublishConflict:
            if not force:
                raise OutputExistsError(f"{ref} was stored by another writer meanwhile; pass --force to replace it") from None
            raise OutputExistsError(f"{ref} was stored, replaced or removed by another writer meanwhile, and is not replaced by this "
                                    "one; run the command again to replace what is there now") from None
        except StorageError as error:  # the manifest's write may have landed though its answer did not
            raise StorageError(f"{error}; {ref} may be stored all the same (`zoo ls` says)") from None
        stored(ref)
        with self._locked():  # this machine's copy: the archive, the manifest, the index
            target = self.object_path(archive)
            if not target.is_file() or sha256_file(target) != archive:  # none yet, or a damaged copy fetched before
                target.parent.mkdir(parents=True, exist_ok=True)
                with locked_temporary(target.parent, temporary_prefix(target), is_dir=False) as temporary:
                    shutil.copyfile(moves[archive], temporary)
                    os.replace(temporary, target)
                format_module.object_replaced(target)
            behind = self._mark_behind()
            self._publish_manifest(record)
            self._update_index(lambda connection: catalogue.put(connection, self._relative(manifest), record), behind)

    def put_model(self, record: dict[str, Any], moves: dict[str, Path], repairs: Collection[str] = ()) -> dict[str, Path]:
        """A model's objects put in the bucket (put_objects), each of `repairs` (coded again by the
        build in place of one the bucket holds damaged) over the damaged one, then its archive: what
        its manifest will name, put by whoever publishes it or by a batch's worker for its driver.
        Returns `moves` as put_objects holds them, `record` naming the archive put."""
        for item in repairs:  # a bucket keeps no lock to hold other models' shells to a new coding (_check_repairs) under
            self._repair_readable(item, record["name"])
        moves = self.put_objects(record, moves, repairs)
        archive = _archive_of(record)
        self.put_archive(archive, moves[archive])
        for item in repairs:  # this machine's copy of the damaged object, fetched to be checked
            self.object_path(item).unlink(missing_ok=True)
            format_module.object_replaced(self.object_path(item))
        return moves

    def put_objects(self, record: dict[str, Any], moves: dict[str, Path], repairs: Collection[str] = ()) -> dict[str, Path]:
        """The objects of `moves` (name -> the build's copy), the model's archive aside, put in the
        bucket, each if absent (one of `repairs` over the damaged one), several at once. Returns
        `moves` held to those found there coded otherwise (_match_the_bucket), `record` (of which
        only the name and the archive are read) then naming a new archive and each object's size.
        put_model puts the archive next, so that it names every object as the bucket codes it."""
        from zoo.kernels.parallel import for_each

        archive = _archive_of(record)
        found: list[str] = []  # there before this put, and coded otherwise than the build's copy

        def put(name: str, path: Path) -> None:
            if not self.storage.put(self.object_key(name), path, if_absent=name not in repairs) and name not in repairs \
                    and not self._coded_as_in_the_bucket(name, path):
                found.append(name)

        for_each(lambda item: put(*item), [item for item in moves.items() if item[0] != archive], 4)
        return self._match_the_bucket(record, moves, found) if found else moves

    def _match_the_bucket(self, record: dict[str, Any], moves: dict[str, Path], found: list[str]) -> dict[str, Path]:
        """`moves` held to the objects of `found`, which the bucket held when they were put, coded
        otherwise than the build's copies: another machine stored the same tensor since the build
        looked, with another pipeline. The model's shell must name each as the bucket codes it: it
        is pointed at the bucket's coding (fetched here and its checksums read), as a folder zoo's
        is (_match_the_zoo). One damaged there, or gone again, is refused."""
        from zoo.container.objects import OBJECT_TENSOR, checksum_problems, read_object_header

        coded_otherwise: dict[str, dict[str, Any]] = {}
        for item in sorted(found):
            ours = read_object_header(moves[item])["tensors"][OBJECT_TENSOR]
            theirs, stored_there = None, self.existing_object(item)  # the bucket's, on this machine
            if stored_there is not None:
                with suppress(ZooError, OSError):
                    theirs = read_object_header(stored_there)["tensors"][OBJECT_TENSOR]
            if stored_there is not None and theirs == ours and stored_there.stat().st_size == moves[item].stat().st_size:
                continue  # coded the same (its header's other fields aside)
            if stored_there is None or theirs is None or theirs == ours or checksum_problems(stored_there):
                raise StoreError(f"{self.url}/{self.object_key(item)}: an object of the zoo this model holds too is damaged, or changed "
                                 f"while the model was stored; {record['name']} was not stored (`zoo verify` names the models that "
                                 "need it; storing it again mends a damaged one)")
            coded_otherwise[item] = theirs
        return self._named_as_stored(record, moves, coded_otherwise) if coded_otherwise else moves

    def _repair_readable(self, item: str, name: str) -> None:
        """On a bucket, a damaged object is replaced only where its header still says how it was
        coded (ObjectSink._check_repair compared it with the build's): one whose header cannot be
        read may be another pipeline's coding, which other models' shells name, and a folder zoo
        holds the new coding to those shells first (_check_repairs), under its lock, which a bucket
        has not. Refused, as every zoo refused it before that check."""
        try:
            format_module.ArchiveFile(self.object_path(item)).close()
        except (ZooError, OSError):
            raise StoreError(f"{self.object_key(item)}: an object of the zoo this model holds too is damaged, its header unreadable, so "
                             f"it cannot be repaired from here; {name} was not stored (`zoo verify` names the models that need it)") from None

    def put_archive(self, name: str, path: Path) -> None:
        """A model's archive put in the zoo's storage, if absent. One found there (the same model
        stored before: the same bytes, the same name) is read back, and put again over it where its
        bytes are not its name's: damaged there, it would never be written again otherwise."""
        key = self.object_key(name)
        if not self.storage.put(key, path) and not self._holds(key, name):
            self.storage.put(key, path, if_absent=False)

    def _holds(self, key: str, name: str) -> bool:
        """Whether the storage's bytes at `key` hash to `name`: read back in blocks (a model's
        archive of objects is headers only, one block)."""
        from zoo.hub.remote import READ_BLOCK_BYTES

        info = self.storage.stat(key)
        if info is None:
            return False
        digest = hashlib.sha256()
        try:
            for start in range(0, info.size, READ_BLOCK_BYTES):
                digest.update(self.storage.read_range(key, start, min(READ_BLOCK_BYTES, info.size - start)))
        except FileNotFoundError:  # collected since the look
            return False
        return digest.hexdigest() == name

    def _remove_remote(self, chosen: list[Entry]) -> None:
        for entry in chosen:
            path = self.manifest_path(entry.name, entry.revision, entry.variant)
            self.storage.delete(self._relative(path))
            path.unlink(missing_ok=True)
        self.dirty.touch()

    def _gc_remote(self) -> list[tuple[Path, int]]:
        """Objects no manifest in the storage names and older than the grace period (a writer's
        objects precede its manifest) are deleted."""
        from zoo.hub.remote import GC_GRACE_SECONDS

        named = set()
        for info in self.storage.list("manifests/"):
            try:
                record = self.check_placed(info.key, check_record(json.loads(self.storage.read(info.key))))
            except FileNotFoundError:
                continue  # removed by `zoo rm` since the listing
            except StorageError:  # the bucket did not answer: no verdict on the manifest
                raise
            except (ValueError, ZooError) as error:
                raise StoreError(f"{self.url}/{info.key}: damaged manifest ({error}); nothing was collected") from None
            named.update(o["sha256"] for o in record["objects"])
            named.update(self._archive_names(record))
        removed = []
        for info in object_keys(self.storage):  # a user's objects/notes.txt is not zoo's to collect
            name = info.key.rsplit("/", 1)[-1].removesuffix(OBJECT_SUFFIX)
            if name in named or time.time() - info.modified <= GC_GRACE_SECONDS:
                continue
            # Its age looked at again just before it goes: a writer that found this object since the
            # listing renewed it before publishing a manifest that names it (Storage.put), and the
            # listing's age would have collected an object of a model stored meanwhile.
            if self.storage.delete(info.key, written_before=time.time() - GC_GRACE_SECONDS):
                removed.append((Path(info.key), info.size))
                self.object_path(name).unlink(missing_ok=True)
        return removed

    @staticmethod
    def is_composed(entry: Entry) -> bool:
        """Whether a model is stored as objects (an archive naming them), not as one archive: its
        header lists the feature. The version alone does not say so: a standalone archive with
        views of F4 values (feature f4-views) is version 3 too."""
        try:
            with open(entry.archive, "rb") as stream:
                if PREAMBLE.unpack(stream.read(PREAMBLE.size))[1] != FEATURES_VERSION:
                    return False
            opened = format_module.ArchiveFile(entry.archive)
        except (OSError, struct.error, ZooError):  # unreadable, too short or malformed: not usable as anything
            return False
        try:
            return "objects" in (opened.header.get("features") or [])
        finally:
            opened.close()

    def manifest_path(self, name: str, revision: str, variant: str) -> Path:
        return self.manifests / manifest_component(name) / manifest_component(revision) / f"{manifest_component(variant)}.json"

    def _refuse_a_foreign_folder(self) -> None:
        """A ZOO_HOME that names a folder holding files but no zoo (a home folder, a project) is
        refused before the zoo writes there: its sweeps and its migration of the old layout would
        take folders under work/ and files under archives/ for the zoo's own. A zoo is known by its
        catalogue, its lock or objects/sha256; without them, by an old layout's archives/*.zoo
        beside nothing but what a zoo makes (its catalogue deleted), or it is a folder that another
        command is making a zoo of (objects/ alone). Hidden files and lost+found do not count."""
        if not self.home.is_dir() or self.catalogue.exists() or self.lock_path.exists() or self.objects.is_dir():
            return
        try:
            names = [name for name in os.listdir(self.home) if not name.startswith(".") and name != "lost+found"]
        except OSError:
            return  # unreadable: creating the zoo's folders says why
        allowed = _MADE_BY_A_ZOO if any(self.archives.glob(f"*{OBJECT_SUFFIX}")) else {"objects"}
        if self._holds_the_eval_cache():
            allowed |= {"eval"}
        foreign = sorted(name for name in names if name not in allowed)
        if foreign:
            raise NotAZooError(f"{self.home}: is no zoo (it holds {foreign[0]!r}, and no catalogue, lock or objects): point ZOO_HOME "
                               "at a zoo, or at a new or empty folder")

    def _holds_the_eval_cache(self) -> bool:
        """Whether the folder's eval/ is what `zoo eval` makes in the default zoo's folder for its
        references (zoo.evaluate.cache), before any zoo is there: a folder of reference files (and
        their hidden temporaries) alone, whichever cache a later command is pointed at."""
        from zoo.evaluate.cache import is_reference_file

        try:
            return (self.home / "eval").is_dir() and all(name.startswith(".") or is_reference_file(name)
                                                         for name in os.listdir(self.home / "eval"))
        except OSError:
            return False

    def _make_folders(self) -> None:
        self._refuse_a_foreign_folder()
        try:
            for folder in (self.home, self.objects, self.manifests, self.work):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"{self.home}: cannot create the zoo: {error.strerror or error}") from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The zoo's publish lock: manifests change, and objects are collected, only under it."""
        self._make_folders()
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _lock_is_free(self) -> bool:
        try:
            with open(self.lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
        except BlockingIOError:
            return False
        except OSError:
            return True

    # -- manifests --------------------------------------------------------------------------

    def holds_manifests(self) -> bool:
        """Whether any manifest file is here, readable or not (a zoo whose index lists no model
        may still hold models whose manifests are damaged)."""
        return any(True for _ in self.manifests.glob("*/*/*.json")) if self.storage is None and self.manifests.is_dir() else False

    def _manifest_files(self) -> list[Path]:
        return sorted(self.manifests.glob("*/*/*.json")) if self.manifests.is_dir() else []

    def _read_manifest(self, path: Path) -> dict[str, Any]:
        try:
            record = check_record(json.loads(path.read_bytes()))
        except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            remedy = ("`zoo doctor` restores it from its object when it can" if self.storage is None else
                      "storing the model again with --force replaces it")
            raise StoreError(f"{path}: damaged manifest ({error}); {remedy}") from None
        try:
            return self.check_placed(self._relative(path), record)
        except ValueError as error:
            raise StoreError(f"{path}: damaged manifest ({error}); `zoo doctor` sets it aside and restores the model from its object") from None

    def check_placed(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        """A manifest read from `key`, or ValueError when its name says it belongs elsewhere (moved or
        edited by hand): it must not pass for the model whose place it holds."""
        proper = self._relative(self.manifest_path(record["name"], record["revision"], record["variant"]))
        if key != proper:
            raise ValueError(f"it names {record['name']}@{record['revision']}:{record['variant']}, whose manifest is {proper}")
        return record

    def _all_manifests(self, problems: list[str] | None = None) -> list[tuple[Path, dict[str, Any]]]:
        """Every readable manifest; an unreadable one is skipped (and reported into `problems`)."""
        found = []
        for path in self._manifest_files():
            try:
                found.append((path, self._read_manifest(path)))
            except StoreError as error:
                if problems is not None and os.path.lexists(path):  # one gone since it was listed: removed (zoo rm), not damaged
                    problems.append(str(error))
        return found

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.home).as_posix()

    def _publish_manifest(self, record: dict[str, Any]) -> Path:
        """Write a manifest under a locked temporary name, fsync it, rename it over. Caller holds the lock."""
        final = self.manifest_path(record["name"], record["revision"], record["variant"])
        final.parent.mkdir(parents=True, exist_ok=True)
        sweep_beside(final)
        with locked_temporary(final.parent, temporary_prefix(final), is_dir=False) as temporary:
            with open(temporary, "w", encoding="utf-8") as stream:
                json.dump(record, stream, indent=1, sort_keys=True)
                stream.write("\n")
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, final)
        fsync_path(final.parent)
        return final

    def _entry(self, record: dict[str, Any]) -> Entry:
        [archive] = [o for o in record["objects"] if o.get("role") == "archive"]
        files = [StoredFile(f["path"], f["size"], f["sha256"], f["served_sha256"], f["git_oid"], bool(f["lfs"]), bool(f["lossless"]))
                 for f in record["files"]]
        return Entry(record["name"], record["revision"], record["variant"], record["commit"], self.object_path(archive["sha256"]),
                     record["pipeline"], record.get("source"), record["original_bytes"], record["stored_bytes"], record["created"],
                     record.get("quality"), files, record.get("adds_bytes"), record.get("base"))

    # -- the index --------------------------------------------------------------------------

    def _index(self) -> sqlite3.Connection:
        """The catalogue, made current first: the old layout is migrated, and an index that is
        missing, empty, damaged or behind the manifests (a writer died before updating it) is
        rebuilt from them. Raises StoreError when it cannot be (the caller reads the manifests)."""
        if self.archives.is_dir():
            self._refuse_a_foreign_folder()
            with self._locked():
                if self.archives.is_dir():
                    self._say_migrated(self._migrate())
        try:
            connection = catalogue.connect(self.catalogue)
        except (sqlite3.Error, OSError):
            pass
        else:
            # behind (a writer died before updating it), or a copy put back: rebuilt, but not while a
            # writer holds the lock (it is updating the index now)
            if (not self.dirty.exists() and self._stamp_holds(connection)) or not self._lock_is_free():
                return connection
            connection.close()
        with self._locked():
            try:
                if not self.dirty.exists():  # another process may have rebuilt it while we waited
                    connection = catalogue.connect(self.catalogue)
                    if self._stamp_holds(connection):
                        return connection
                    connection.close()
            except (sqlite3.Error, OSError):
                pass
            self.rebuild_index()
        try:
            return catalogue.connect(self.catalogue)
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"{self.catalogue}: cannot open the catalogue: {error}") from None

    def _stamp_holds(self, connection: sqlite3.Connection) -> bool:
        """Whether the index holds the stamp of the last change it took (catalogue.stamp): an
        index put back from a copy holds an older one, and answered for models removed since, and
        without those stored since, as long as nothing marked it behind. A zoo from before stamps
        (none written yet) has nothing to compare."""
        try:
            written = self.stamp_path.read_text(encoding="utf-8").strip()
        except OSError:  # none, or not this user's to read: no telling, as before stamps
            return True
        except ValueError:  # not text: damaged, and rewritten with the index
            return False
        try:
            held = connection.execute(f"SELECT value FROM {_STAMP_TABLE}").fetchone()
        except sqlite3.DatabaseError:  # an index written before stamps (no such table), or damaged: rebuilt
            return False
        return held is not None and held[0] == written

    def _stamp(self, connection: sqlite3.Connection) -> str:
        """Give the index a new stamp, in the caller's transaction; returns it, for _write_stamp
        once that transaction is in. One read in _index tells an index current: a record of the
        manifests' state instead (every manifest's identity, size and age) cost as much as the
        listing it guards (2 ms with 100 models, 12 ms with 500, where the listing takes 1.6 and 6)."""
        stamp = os.urandom(16).hex()
        connection.execute(f"CREATE TABLE IF NOT EXISTS {_STAMP_TABLE} (value TEXT NOT NULL)")
        connection.execute(f"DELETE FROM {_STAMP_TABLE}")
        connection.execute(f"INSERT INTO {_STAMP_TABLE} VALUES (?)", (stamp,))
        return stamp

    def _write_stamp(self, stamp: str) -> None:
        """catalogue.stamp, put in place whole. Where it cannot be written (a full disk) the index no
        longer holds the same, and the next reader rebuilds it. Caller holds the lock."""
        sweep_beside(self.stamp_path)  # a killed writer's temporary
        with suppress(OSError), locked_temporary(self.home, temporary_prefix(self.stamp_path), is_dir=False) as temporary:
            temporary.write_text(stamp + "\n", encoding="utf-8")
            os.chmod(temporary, 0o644)  # read by every user of a shared zoo
            os.replace(temporary, self.stamp_path)

    def rebuild_index(self) -> int:
        """Write the index afresh from the manifests and put it in place. Caller holds the lock."""
        self._make_folders()
        unreadable: list[str] = []
        records = [(self._relative(path), record) for path, record in self._all_manifests(unreadable)]
        if unreadable:  # left out of the index, so out of `zoo ls` and every name: said once, as the index is made
            more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
            warnings.warn(f"{unreadable[0]}{more}; its model is left out of the index until then", ZooWarning, stacklevel=2)
        try:
            # named as _sweep_work sweeps it when a run is killed meanwhile; locked while it is built
            with locked_temporary(self.work, temporary_prefix(self.work / "catalogue"), is_dir=False) as fresh:
                catalogue.build(fresh, records)
                with closing(sqlite3.connect(fresh, isolation_level=None)) as connection:
                    connection.execute("PRAGMA journal_mode = MEMORY")
                    connection.execute("BEGIN")
                    stamp = self._stamp(connection)
                    connection.execute("COMMIT")
                fsync_path(fresh)
                os.chmod(fresh, 0o644)  # read by every user of a shared zoo, as the manifests are (a temporary is 0600)
                kill_point("index-built")
                legacy = self.home / "catalogue-v1.sqlite"
                if not legacy.exists() and legacy_records(self.catalogue):
                    # a catalogue of the old layout whose archives are not here: it was the record, keep it
                    shutil.copyfile(self.catalogue, legacy)
                for suffix in ("-journal", "-wal", "-shm"):  # a journal of the old file must never meet the new one
                    with suppress(FileNotFoundError):
                        os.unlink(f"{self.catalogue}{suffix}")
                os.replace(fresh, self.catalogue)
            self._write_stamp(stamp)
            with suppress(FileNotFoundError):
                self.dirty.unlink()
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"{self.catalogue}: cannot rebuild the catalogue: {_reason(error)}") from None
        return len(records)

    # -- reading ----------------------------------------------------------------------------

    def index_stamp(self) -> tuple[Any, ...] | None:
        """A value that changes whenever what the catalogue answers may: the file's identity, size
        and time, and SQLite's file change counter (header bytes 24-27, bumped by every commit in
        the rollback journal mode zoo's catalogue uses). None where there is no telling (a zoo on
        object storage, an index to rebuild or to migrate, none yet): ask the catalogue itself."""
        if self.storage is not None or self.dirty.exists() or self.archives.is_dir():
            return None
        try:
            descriptor = os.open(self.catalogue, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            status, head = os.fstat(descriptor), os.pread(descriptor, 28, 0)
        except OSError:
            return None
        finally:
            os.close(descriptor)
        return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, head

    def entries(self, name: str | None = None, with_files: bool = False) -> list[Entry]:
        if not self.exists() or (name is not None and not NAME_PATTERN.fullmatch(name)):  # a name no model can have (not UTF-8)
            return []
        try:
            try:
                with closing(self._index()) as connection:
                    return [self._entry(record) for record in catalogue.records(connection, name, with_files)]
            except (sqlite3.DatabaseError, OSError):  # damaged past its header: rebuild, read again
                with self._locked():
                    self.rebuild_index()
                with closing(self._index()) as connection:
                    return [self._entry(record) for record in catalogue.records(connection, name, with_files)]
        except NotAZooError:
            raise
        except (StoreError, sqlite3.Error, OSError):
            # No usable index (disk full, read-only zoo): the manifests are the record; read them.
            records = [record for _, record in self._all_manifests()]
            counts: dict[str, int] = {}
            for record in records:
                for item in {o["sha256"] for o in record["objects"]}:
                    counts[item] = counts.get(item, 0) + 1
            for record in records:
                record["adds_bytes"] = sum(o["size"] for o in record["objects"] if counts[o["sha256"]] == 1)
            found = [self._entry(record) for record in records if name is None or record["name"] == name]
            if not with_files:
                for entry in found:
                    entry.files = []
            return sorted(found, key=lambda e: (e.name, e.revision, e.variant))

    def sharing(self, entry: Entry) -> dict[str, Any]:
        """How a model's objects are shared: {"objects", "shared" (named by other models too),
        "shared_bytes", "adds_bytes", "base"}."""
        records = [record for _, record in self._all_manifests()]
        own = next((r for r in records if (r["name"], r["revision"], r["variant"]) == (entry.name, entry.revision, entry.variant)), None)
        if own is None:  # "0 of its 0 objects ... adds 0 B" was said of a model whose manifest is damaged
            raise StoreError(f"{entry.ref}: its manifest cannot be read (`zoo doctor` says why and mends what it can)")
        others = {o["sha256"] for r in records if r is not own for o in r["objects"]}
        shared = [o for o in own["objects"] if o["sha256"] in others]
        return {"objects": len(own["objects"]), "shared": len(shared), "shared_bytes": sum(o["size"] for o in shared),
                "adds_bytes": sum(o["size"] for o in own["objects"] if o["sha256"] not in others), "base": own.get("base")}

    def objects_of(self, refs: set[str]) -> set[str]:
        """Every object the models `refs` (NAME@REVISION:VARIANT) name, as their manifests say now."""
        self._sync()
        return {o["sha256"] for _, r in self._all_manifests() if f"{r['name']}@{r['revision']}:{r['variant']}" in refs for o in r["objects"]}

    def total_bytes(self) -> int:
        """What the zoo's objects take on disk (in the bucket, for a zoo on object storage)."""
        if self.storage is not None:
            return sum(info.size for info in object_keys(self.storage))
        total = 0
        for path in self._object_files():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def matches(self, ref: str, with_files: bool = False) -> list[Entry]:
        """Entries a ref names, best first: without a revision 'main' comes first, without a
        variant the lossless one, then the most recent. A revision may also be the commit."""
        name, revision, variant = parse_ref(ref)
        found = [
            e for e in self.entries(name, with_files)
            if (revision is None or revision in (e.revision, e.commit)) and (variant is None or variant_match(variant, e))
        ]
        return sorted(found, key=lambda e: (revision is None and e.revision != DEFAULT_REVISION, variant is None and e.variant != LOSSLESS, -e.created))

    def readable(self, ref: str, with_files: bool = False) -> list[Entry]:
        """The entries a command that reads a model takes `ref` to mean, best first (manifest.readable)."""
        has_main = any(e.revision == DEFAULT_REVISION for e in self.entries(parse_ref(ref)[0]))
        return readable(self.matches(ref, with_files), ref, has_main)

    def resolve(self, ref: str, with_files: bool = False) -> Entry:
        found = self.matches(ref, with_files)
        if not found:
            raise InputError(f"{ref!r} is not in the zoo at {self.location} (see `zoo ls`)")
        return found[0]

    def stored_variant(self, name: str, revision: str, variant: str) -> str:
        """The label under which the zoo holds `variant` of name@revision: `variant` itself, or the
        one an older zoo wrote for the same pipeline (`l2:target_ratio=8,tune=0`, from before float
        parameters given as integers were written as floats, for `...=8.0,tune=0`). A compress of
        that pipeline is then refused as already there, and --force replaces it, where it was
        stored a second time beside it."""
        wanted = canonical_variant(variant)
        return next((e.variant for e in self.entries(name)
                     if e.revision == revision and e.variant != variant and canonical_variant(e.variant) == wanted), variant)

    def exists_ref(self, name: str, revision: str, variant: str) -> Entry | None:
        """The entry stored as name@revision:variant (under an older zoo's label for the same
        pipeline too: stored_variant), read from its manifest (the record itself)."""
        if self.archives.is_dir():
            self.entries(name)  # migrates the old layout first
        path = self.manifest_path(name, revision, self.stored_variant(name, revision, variant))
        return self._entry(self._read_manifest(path)) if path.is_file() else None

    # -- writing ----------------------------------------------------------------------------

    @contextmanager
    def workspace(self) -> Iterator[Path]:
        """A private folder inside the store for work that may later enter it (same file system,
        so entering is a rename). Locked while in use; removed afterwards whatever happens."""
        self._make_folders()
        # a killed writer's folder first: it may hold what this job needs room for (a full disk
        # failed every later compress, and the zoo looked empty, until gc or doctor)
        self._sweep_work()
        folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.work))
        # Locked under another name, then renamed: a sweeper never sees an unlocked `.lock`.
        lock = open(folder / ".lock-pending", "w")  # noqa: SIM115 - held for as long as the folder is in use
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            os.replace(folder / ".lock-pending", folder / ".lock")
            yield folder
        finally:
            with signals_held():  # removed whole: a signal waits for it (a job folder was left, for doctor)
                shutil.rmtree(folder, ignore_errors=True)
                lock.close()

    def add(self, archive: str | os.PathLike[str], name: str, revision: str = DEFAULT_REVISION, *, commit: str | None = None,
            source: str | None = None, force: bool = False, move: bool = False) -> Entry:
        """Record an archive in the zoo. With move=True the file (which must lie in this store's
        work folder) is renamed into place; otherwise it is copied first."""
        check_name(name)
        check_revision(revision)
        archive = Path(archive)
        metadata, files = describe_files(archive)
        record = record_of(metadata, files, name, revision, commit, source, time.time())
        if move:
            self._enter(archive, record, force)
        else:
            with self.workspace() as folder:
                shutil.copyfile(archive, folder / "copy.zoo")
                self._enter(folder / "copy.zoo", record, force)
        return self.resolve(f"{name}@{revision}:{record['variant']}", with_files=True)

    def _enter(self, archive: Path, record: dict[str, Any], force: bool) -> None:
        """A model stored as one archive: see _publish."""
        try:
            with open(archive, "rb") as stream:
                os.fsync(stream.fileno())
            sha256 = sha256_file(archive)
        except OSError as error:
            raise StoreError(f"{archive}: cannot read the new archive: {_reason(error)}") from None
        size = archive.stat().st_size
        record["objects"] = [{"role": "archive", "sha256": sha256, "size": size}]
        record["stored_bytes"] = size
        self._publish(record, {sha256: archive}, force)

    def add_composed(self, shell: Path, sink: ObjectSink, name: str, revision: str = DEFAULT_REVISION, *, commit: str | None = None,
                     source: str | None = None, force: bool = False) -> Entry:
        """Record a model built as objects (zoo.container.objects): `shell`, the archive naming
        them, and the objects in `sink.root`, all inside one of this store's work folders."""
        check_name(name)
        check_revision(revision)
        metadata, files = describe_files(shell, objects_root=sink.root)
        record = record_of(metadata, files, name, revision, commit, source, time.time())
        try:
            # the objects coded here reach the disk before anything names them: one sync of the
            # file system for all of them (an fsync each cost MiniLM's 117 objects a second)
            _sync_files([object_path(sink.root, item) for item in sink.written] + [shell])
            moves = {item: object_path(sink.root, item) for item in [*sorted(sink.written), *sink.reused]}
            shell_name = sha256_file(shell)
        except OSError as error:
            raise StoreError(f"{shell}: cannot read the new model's objects: {_reason(error)}") from None
        sizes = {item: path.stat().st_size for item, path in moves.items()}
        _name_objects(record, shell, shell_name, sizes, str(shell), "the build did not leave")
        moves[shell_name] = shell
        self._publish(record, moves, force, repairs=sink.repairs)
        return self.resolve(f"{name}@{revision}:{record['variant']}", with_files=True)

    def add_put(self, shell_name: str, objects: dict[str, int], name: str, revision: str = DEFAULT_REVISION, *,
                commit: str | None = None, source: str | None = None, force: bool = False) -> Entry:
        """Record a model whose shell (`shell_name`) and objects (name -> size) a worker has put in
        this zoo's storage already (zoo.batch, on a bucket): the shell is fetched, checked to name
        only those objects, and the manifest published by its conditional put."""
        if self.storage is None:
            raise StoreError(f"{self.home}: a zoo in a folder takes a model from a work folder (add_composed)")
        check_name(name)
        check_revision(revision)
        try:
            shell = self.existing_object(shell_name, archive=True)
        except StoreError as error:  # damaged in the bucket
            raise StoreError(f"{error}; {name} was not stored") from None
        except OSError as error:
            raise StoreError(f"{self.url}: cannot read the shell of {name}: {_reason(error)}") from None
        if shell is None:
            raise StoreError(f"{self.url}: the shell {shell_name[:16]}... of {name} is not in the bucket; nothing was stored")
        metadata, files = describe_files(shell, objects_root=self.objects)
        record = record_of(metadata, files, name, revision, commit, source, time.time())
        _name_objects(record, shell, shell_name, objects, shell_name, "its worker did not put")
        self._publish(record, {shell_name: shell}, force)
        return self.resolve(f"{name}@{revision}:{record['variant']}", with_files=True)

    def _publish(self, record: dict[str, Any], moves: dict[str, Path], force: bool, repairs: Collection[str] = ()) -> None:
        """Objects first, manifest last, index after (see the module's docstring): each object of
        `moves` (name -> a file in a work folder) the zoo lacks is renamed in, under the lock, and
        so is each of `repairs`, the same object coded again in place of one the zoo holds damaged."""
        # before anything enters (a manifest the index could not hold stopped every command); compress_into said so before the coding
        refuse_names_not_utf8(record_names(record))
        record["variant"] = self.stored_variant(record["name"], record["revision"], record["variant"])  # an older zoo's label
        if self.storage is not None:
            self._publish_remote(record, moves, force, repairs)
            return
        ref = f"{record['name']}@{record['revision']}:{record['variant']}"
        with self._locked():
            self._sweep_work()
            manifest = self.manifest_path(record["name"], record["revision"], record["variant"])
            old = self._read_manifest(manifest) if manifest.is_file() else None
            if old is not None and not force:
                raise OutputExistsError(f"{ref} is already in the zoo; pass --force to replace it")
            moves, repairs = self._match_the_zoo(record, moves, repairs)
            created: list[str] = []
            try:
                folders = set()
                for item, path in moves.items():
                    target = self.object_path(item)
                    if target.exists() and item not in repairs:
                        continue  # the same object, as the shell names it (_match_the_zoo), stored by another model
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.chmod(path, 0o444)  # objects are immutable
                    os.replace(path, target)
                    if item in repairs:
                        format_module.object_replaced(target)
                    created.append(item)
                    folders.add(target.parent)
                _sync_files(sorted(folders))
                kill_point("store-object")
                behind = self._mark_behind()
                self._publish_manifest(record)
            except BaseException as error:
                # Nothing names the new objects (we hold the lock: no one else published meanwhile).
                if created:
                    named = self._named_objects()
                    for item in created:
                        if item not in named:
                            self.object_path(item).unlink(missing_ok=True)
                if isinstance(error, OSError):
                    raise StoreError(f"cannot store {ref} in {self.location}: {_reason(error)}; nothing was stored") from None
                raise
            stored(ref)
            kill_point("store-manifest")
            self._update_index(lambda connection: catalogue.put(connection, self._relative(manifest), record), behind)
            if old is not None:
                with signals_held():  # the replaced model's objects go whole, or wait for `zoo gc`
                    self._drop_unnamed({o["sha256"] for o in old["objects"]}, {o["sha256"] for o in old["objects"] if o["role"] == "archive"})

    def _match_the_zoo(self, record: dict[str, Any], moves: dict[str, Path], repairs: Collection[str]) -> tuple[dict[str, Path], set[str]]:
        """`moves` and `repairs` held to the objects the zoo holds now, before any enters it: the
        model's shell must name each object as the file of that name in the zoo codes it, or the
        model is published unreadable. Caller holds the lock; `record` takes the shell's new name.

        A file of the name that is no link to the build's copy was stored by another writer since
        the build looked: the same tensor, but maybe coded by another pipeline, with other chunk
        indexes than those the shell copied from the build's coding. The shell is then pointed at
        the zoo's coding (a new shell, so a new name), as the build would have named it had it found
        it; coded the same but of another size (cut short or lengthened since), or with a header that
        cannot be read, the build's copy replaces it (a repair), once held to what the other models
        keep of the object. Coded the same and of its size, it is left as it is: its checksums were
        read as the build found it, or it is another writer's, just written (a link that failed
        costs no read of the object here). The model's archive is named by the sha256 of its bytes:
        one there of other bytes is damaged, and the build's replaces it."""
        from zoo.container.objects import OBJECT_TENSOR, checksum_problems, read_object_header

        archive = _archive_of(record)
        repairs = set(repairs)
        coded_otherwise: dict[str, dict[str, Any]] = {}
        for item, path in moves.items():
            target = self.object_path(item)
            if item == archive or item in repairs or not target.exists() or _same_file(path, target):
                continue
            try:
                theirs = read_object_header(target)["tensors"][OBJECT_TENSOR]
            except (ZooError, OSError):
                theirs = None  # its coding unknown: a repair, if what the other models keep of it allows
            if theirs == read_object_header(path)["tensors"][OBJECT_TENSOR]:
                if target.stat().st_size != path.stat().st_size:  # coded the same, cut short or lengthened: ours replaces it
                    repairs.add(item)
            elif theirs is None:
                repairs.add(item)
            elif not checksum_problems(target):
                coded_otherwise[item] = theirs
            else:
                raise StoreError(f"{target}: an object of the zoo this model holds too is damaged, and coded otherwise than this build "
                                 f"codes it, so it cannot be repaired from here; {record['name']} was not stored (`zoo verify` names "
                                 "the models that need it)")
        self._check_repairs(record["name"], {item: moves[item] for item in repairs if item in moves and item != archive})
        if coded_otherwise:
            moves = self._named_as_stored(record, moves, coded_otherwise)
            archive = _archive_of(record)
        target = self.object_path(archive)
        if archive not in repairs and target.is_file() and not _same_file(moves[archive], target) \
                and (target.stat().st_size != moves[archive].stat().st_size or sha256_file(target) != archive):
            repairs.add(archive)  # damaged: not the bytes its name says
        return moves, repairs

    def _named_as_stored(self, record: dict[str, Any], moves: dict[str, Path],
                         coded_otherwise: dict[str, dict[str, Any]]) -> dict[str, Path]:
        """`moves` with the model's shell pointed at the zoo's coding of each object of
        `coded_otherwise` (name -> the record of its tensor in the zoo's file, self.object_path(name)),
        as the build would have named it had it found it: a new shell, so a new name, which `record`
        takes; those objects are left out of `moves` (the zoo's stay)."""
        from zoo.container.objects import name_as_coded

        archive = _archive_of(record)
        shell = moves[archive]
        opened = format_module.ArchiveFile(shell)
        try:
            header, start = opened.header, opened.payload_start
        finally:
            opened.close()
        name_as_coded(header, coded_otherwise)
        named_anew = shell.with_name(f"{shell.name}.as-stored")
        format_module.assemble(named_anew, header, shell, start)
        sizes = {item: (self.object_path(item) if item in coded_otherwise else path).stat().st_size
                 for item, path in moves.items() if item != archive}
        moves = {item: path for item, path in moves.items() if item not in coded_otherwise and item != archive}
        archive = sha256_file(named_anew)
        _name_objects(record, named_anew, archive, sizes, str(named_anew), "the build did not leave")
        moves[archive] = named_anew
        return moves

    def _check_repairs(self, name: str, repairs: dict[str, Path]) -> None:
        """Refuse to put an object of `repairs` (name -> this build's coding) in the place of the
        zoo's damaged one where another model's shell names it coded otherwise (its chunk indexes
        would not be this coding's) or its manifest records another size: the damaged one's own
        header may be unreadable, and the shells and manifests keep its record. Caller holds the lock."""
        from zoo.container.objects import OBJECT_TENSOR, names_otherwise, read_object_header

        if not repairs:
            return
        entries = {item: read_object_header(path)["tensors"][OBJECT_TENSOR] for item, path in repairs.items()}
        sizes = {item: path.stat().st_size for item, path in repairs.items()}
        for _, record in self._all_manifests():
            ref = f"{record['name']}@{record['revision']}:{record['variant']}"
            header = self._shell_header(record)
            for item in sorted(repairs):
                recorded = next((o["size"] for o in record["objects"] if o["sha256"] == item), sizes[item])
                if recorded != sizes[item]:
                    why = f"the manifest of {ref} records it at {recorded} bytes where this build's coding is {sizes[item]}"
                elif header is not None and names_otherwise(header, item, entries[item]):
                    why = f"the archive of {ref} names it coded otherwise than this build codes it"
                else:
                    continue
                raise StoreError(f"{self.object_path(item)}: an object of the zoo this model holds too is damaged, and {why}, so it "
                                 f"cannot be repaired from here; {name} was not stored (`zoo verify` names the models that need it)")

    def _shell_header(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """The header of a manifest's archive, or None where it cannot be read."""
        try:
            opened = format_module.ArchiveFile(self.object_path(_archive_of(record)))
        except (ZooError, OSError):
            return None
        try:
            return opened.header
        finally:
            opened.close()

    def _mark_behind(self) -> bool:
        """Mark the index behind the manifests about to change; whether it was already: a writer
        died before updating it (the caller holds the lock, so no live one marked it), and its
        change is missing from the index. Caller holds the lock."""
        already = self.dirty.exists()
        self.dirty.touch()
        return already

    def _update_index(self, change: Any, behind: bool = False) -> None:
        """Apply a change to the index, or leave it marked behind (the next reader rebuilds it):
        the manifest, already published, is what counts, and the command that published it has
        done its work. `behind` (_mark_behind found the index behind already): rebuilt instead,
        as a row of this change alone would leave a dead writer's model out of it, and its mark
        gone (a stored model vanished from `zoo ls` until `zoo doctor`). Caller holds the lock."""
        if not behind:
            try:
                with closing(catalogue.connect(self.catalogue)) as connection:
                    connection.execute("BEGIN IMMEDIATE")
                    try:
                        if not self._stamp_holds(connection):  # a copy put back: this row would stamp it current
                            raise sqlite3.DatabaseError("an older copy of the index")
                        change(connection)
                        stamp = self._stamp(connection)
                    except BaseException:
                        connection.execute("ROLLBACK")
                        raise
                    connection.execute("COMMIT")
            except (sqlite3.Error, OSError):
                pass
            else:
                self._write_stamp(stamp)
                with suppress(FileNotFoundError):
                    self.dirty.unlink()
                return
        try:
            self.rebuild_index()
        except StoreError as error:  # a full disk, a folder in its place: readers go to the manifests
            warnings.warn(f"{error}; the index is behind, and commands read the manifests until it can be rebuilt",
                          ZooWarning, stacklevel=2)

    def _named_objects(self) -> set[str]:
        """Every object sha256 a readable manifest names, and every one the archives they name
        name in their headers: a manifest whose list lost items (edited, or damaged but still
        valid JSON) must not get its model's objects collected. An unreadable manifest makes this
        fail: what it names is unknown, so nothing may be collected."""
        named = set()
        for path in self._manifest_files():
            record = self._read_manifest(path)
            named.update(o["sha256"] for o in record["objects"])
            named.update(self._archive_names(record))
        return named

    def _archive_names(self, record: dict[str, Any]) -> set[str]:
        """The objects that the header of a manifest's archive names (none where it cannot be read;
        on object storage, this machine's copy of the archive, fetched first where it has none)."""
        archive = next((o["sha256"] for o in record["objects"] if o.get("role") == "archive"), None)
        if archive is None:
            return set()
        try:
            path = self.existing_object(archive, archive=True) if self.storage is not None else self.object_path(archive)
            if path is None:
                return set()
            opened = format_module.ArchiveFile(path)
        except (OSError, ZooError):
            return set()
        try:
            return object_names(opened.header)
        finally:
            opened.close()

    def _drop_unnamed(self, candidates: Any, archives: Collection[str] = ()) -> None:
        """Remove those of `candidates` no manifest names any more (rm and --force: the objects
        they just released), `archives` (the models' shells) first: a shell left alone by a kill
        would have `zoo doctor` give the model back its manifest. Caller holds the lock. A reader
        that has an object open keeps reading it; one that opens it later (objects are opened as
        first read) finds it missing."""
        try:
            named = self._named_objects()
        except StoreError:
            # A manifest that cannot be read may name any object: none is collected. But a released
            # shell is named only by its own model's manifest (its header holds the model's name),
            # and one left here had `zoo doctor` give the removed or replaced model back.
            shells = {o["sha256"] for _, record in self._all_manifests() for o in record["objects"] if o.get("role") == "archive"}
            for sha256 in set(archives) - shells:
                self.object_path(sha256).unlink(missing_ok=True)
            warnings.warn(f"the zoo at {self.location} holds a manifest it cannot read: the objects only the released model named "
                          "stay until `zoo doctor` mends it and `zoo gc` runs", ZooWarning, stacklevel=3)
            return
        for sha256 in sorted(set(candidates) - named, key=lambda sha256: sha256 not in archives):
            self.object_path(sha256).unlink(missing_ok=True)
            kill_point("drop-object")

    def remove(self, ref: str, every: bool = False, force: bool = False) -> list[Entry]:
        """Remove models' manifests, then the objects nothing names any more. A model that others
        are stored against (their XOR bases) stays unless `force`; its objects stay while needed."""
        for attempt in range(2):
            found = self.matches(ref)
            if not found:
                raise InputError(f"{ref!r} is not in the zoo at {self.location} (see `zoo ls`)")
            if len(found) > 1 and not every:
                names = ", ".join(e.ref for e in found)
                raise InputError(f"{ref!r} names {len(found)} entries ({names}); name one, or pass --all")
            chosen = found if every else found[:1]
            with self._locked():
                records = {f"{record['name']}@{record['revision']}:{record['variant']}": record for _, record in self._all_manifests()}
                # What goes is what the manifests say the ref names, never the index alone: a damaged
                # row gave another model's entry for a name, and `zoo rm NAME --all` removed that model.
                if all(e.name == parse_ref(ref)[0] and e.ref in records and e.archive.name == f"{_archive_of(records[e.ref])}{OBJECT_SUFFIX}"
                       for e in chosen):
                    return self._remove(chosen, records, force)
                if attempt:
                    raise StoreError(f"{self.catalogue}: the index disagrees with the manifests about {ref!r} even rebuilt; "
                                     "nothing was removed (run `zoo doctor`)")
                self.rebuild_index()
        raise AssertionError("unreachable")

    def _remove(self, chosen: list[Entry], records: dict[str, dict[str, Any]], force: bool) -> list[Entry]:
        """remove()'s work, under the lock: `records` are the manifests by NAME@REVISION:VARIANT."""
        refs = {e.ref: e.commit for e in chosen}
        needed: dict[str, set[str]] = {}  # of the models being removed, those others need: by whom
        for ref, record in records.items():
            if ref not in refs:
                for base, commit in refs.items():
                    if stored_against(with_chained_needs(record.get("base"), records), base, commit):
                        needed.setdefault(base, set()).add(ref)
        if needed and not force:
            needing = sorted(set().union(*needed.values()))
            one = len(needed) == 1
            raise InputError(f"{', '.join(sorted(needed))} {'is the base' if one else 'are the bases'} of {', '.join(needing)}, whose "
                             f"tensors are stored as XORs against {'it' if one else 'them'}; remove those first, or pass --force to "
                             "remove the name only (the objects they need stay)")
        if self.storage is not None:
            self._remove_remote(chosen)  # its objects stay until `zoo gc` (other machines may be writing)
            for entry in chosen:
                removed(entry.ref)
            with suppress(StoreError):
                self.rebuild_index()
            return chosen
        # whole, or not begun: a signal waits for the end (the model was gone, the command said
        # "interrupted", and the objects it had not reached waited for `zoo gc`)
        with signals_held():
            behind = self._mark_behind()
            paths = [self.manifest_path(e.name, e.revision, e.variant) for e in chosen]
            released = set()
            for path in paths:
                with suppress(StoreError, FileNotFoundError):
                    released |= {o["sha256"] for o in self._read_manifest(path)["objects"]}
            for path in paths:
                path.unlink(missing_ok=True)
            self._update_index(lambda connection: [catalogue.delete(connection, self._relative(p)) for p in paths], behind)
            shells = {e.archive.name.removesuffix(OBJECT_SUFFIX) for e in chosen}
            self._drop_unnamed(released | shells, shells)
            for entry in chosen:
                removed(entry.ref)
        return chosen

    # -- upkeep -----------------------------------------------------------------------------

    def _sweep_work(self) -> list[Path]:
        """Remove work folders whose process is gone (their lock is free)."""
        removed: list[Path] = []
        if not self.work.is_dir():
            return removed
        for folder in self.work.iterdir():
            if not folder.is_dir() or not _JOB_FOLDER.fullmatch(folder.name):
                continue  # the index's temporaries sweep themselves (zoo.hub.temporaries); anything else is no job's (workspace)
            try:
                with open(folder / ".lock") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is alive
            except FileNotFoundError:
                # Its owner finished and removed it since iterdir(), or it was killed between
                # creating the folder and its lock file: only an old folder without a lock is debris.
                try:
                    if time.time() - folder.stat().st_mtime < 3600:
                        continue
                except FileNotFoundError:
                    continue  # gone already
            except OSError:
                continue  # unreadable: not ours to judge
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        sweep_beside(self.work / "catalogue")
        return removed

    def _object_files(self) -> list[Path]:
        return sorted(self.objects.glob(f"??/*{OBJECT_SUFFIX}")) if self.objects.is_dir() else []

    def verify(self, threads: int = 1) -> tuple[int, int, list[str]]:
        """Check the whole zoo: every object once (decoded; one coded without loss against the
        sha256 of its bytes and its name, any other against the sha256 of its file), then every
        manifest (its objects there at their sizes, its archive's layout sound). Returns (objects,
        manifests, problems). On object storage each object is streamed from the bucket
        (zoo.hub.bucket_upkeep)."""
        from zoo.kernels.parallel import for_each

        if self.storage is not None:
            from zoo.hub.bucket_upkeep import verify_bucket

            return verify_bucket(self, threads)
        here = self.exists()  # a folder of the user's own is refused, not reported as a sound empty zoo
        problems: list[str] = []
        files = self._object_files()
        damaged: set[str] = set()

        def check(path: Path) -> None:
            found = object_problems(path, path.name.removesuffix(OBJECT_SUFFIX), str(path))
            if found and os.path.lexists(path):  # one gone since it was listed was collected (zoo gc, rm), not damaged
                damaged.add(path.name.removesuffix(OBJECT_SUFFIX))
                problems.extend(found)

        for_each(check, files, threads)
        manifests = self._all_manifests(problems)
        for manifest, record in manifests:
            ref = f"{record['name']}@{record['revision']}:{record['variant']}"
            found, wrong = self._recorded_problems(ref, record)
            if not found:  # as on a bucket: a missing object is said once, not again by each read of it
                found = wrong + self._archive_problems(record, threads)
            if found and not self._still(manifest, record):
                continue  # removed or replaced meanwhile (zoo rm, compress --force): its objects went with it
            problems += found
            if damaged:  # the archive's header read again only then
                problems += needs_damaged(ref, damaged & ({o["sha256"] for o in record["objects"]} | self._archive_names(record)))
        # `zoo ls` would say other than what was checked: looked at again under the lock, by a user
        # who may write the zoo (one who may not, reading a shared or shipped zoo, has no index of
        # it to mend: its catalogue is its owner's alone, or not there at all)
        if here and os.access(self.home, os.W_OK) and self._index_problem(manifests) is not None:
            try:
                with self._locked():
                    self._mend_index(self._all_manifests())
            except (OSError, StoreError) as error:  # read-only below its top: said, and left to doctor
                reason = _reason(error) if isinstance(error, OSError) else str(error)
                warnings.warn(f"{self.catalogue}: {self._index_problem(manifests)}; cannot rebuild it: {reason}", ZooWarning, stacklevel=2)
        return len(files), len(manifests), problems

    def _recorded_problems(self, ref: str, record: dict[str, Any]) -> tuple[list[str], list[str]]:
        """A manifest's objects against the zoo's files: (those missing or not of their recorded
        size, which the model cannot be read without; the entries of the manifest that are what is
        wrong, the objects sound and the model readable: _wrong_record)."""
        mismatched = [item for item in record["objects"] if not (path := self.object_path(item["sha256"])).is_file()
                      or path.stat().st_size != item["size"]]
        header = self._shell_header(record) if mismatched else None
        named = object_names(header) if header is not None else set()
        damage, wrong = [], []
        for item in mismatched:
            path = self.object_path(item["sha256"])
            why = self._wrong_record(item, header, named) if header is not None else None
            if why == "unnamed":
                wrong.append(f"{ref}: its manifest names object {path}, which its archive does not name and the zoo lacks (edited by "
                             "hand?); `zoo doctor` mends the manifest")
            elif why == "size":
                wrong.append(f"{ref}: its manifest records object {path} at {item['size']} bytes, where it is {path.stat().st_size} and "
                             "sound (edited by hand?); `zoo doctor` mends the manifest")
            else:
                damage.append(f"{ref}: object {path} is missing or not of its recorded size")
        return damage, wrong

    def _still(self, manifest: Path, record: dict[str, Any]) -> bool:
        """Whether `manifest` still holds `record`, as read before."""
        try:
            return self._read_manifest(manifest) == record
        except StoreError:
            return False

    def _archive_problems(self, record: dict[str, Any], threads: int = 1) -> list[str]:
        """A model's archive against its manifest: its layout sound, its files those the manifest
        lists, and each lossy file decoding to the sha256 the manifest records of it."""
        from zoo.container.reader import Archive

        ref = f"{record['name']}@{record['revision']}:{record['variant']}"
        archive = next(o for o in record["objects"] if o["role"] == "archive")
        try:
            with Archive(self.object_path(archive["sha256"])) as opened:
                problems = [f"{ref}: {problem}" for problem in opened.layout_problems()]
                held = {f["path"]: (f["size"], f["sha256"], bool(f.get("lossless"))) for f in opened.files()}
            listed = {f["path"]: (f["size"], f["sha256"], bool(f["lossless"])) for f in record["files"]}
            if held.keys() != listed.keys() or any(held[path][0] != listed[path][0] for path in held):
                problems.append(f"{ref}: its manifest lists other files than its archive")
            else:
                # the sha256 serve announces of a file decoded bit for bit is the archive's, which decoding is held to
                other = sorted(f["path"] for f in record["files"] if listed[f["path"]] != held[f["path"]]
                               or (f["lossless"] and f["served_sha256"] != f["sha256"]))
                if other:
                    more = f" and {len(other) - 1} more" if len(other) > 1 else ""
                    problems.append(f"{ref}: its manifest's record of {other[0]!r}{more} (sha256, or whether it is lossless) "
                                    "is not its archive's (edited by hand?); store the model again with --force")
            left_out = self._archive_names(record) - {o["sha256"] for o in record["objects"]}
            if left_out:
                remedy = "`zoo doctor` lists them again" if self.storage is None else "store the model again with --force to list them"
                problems.append(f"{ref}: its manifest leaves out {len(left_out)} of the objects its archive names ({remedy})")
            lossy = {f["path"]: f["served_sha256"] for f in record["files"] if not f["lossless"]}
            if lossy and not problems:  # decoded and held to the sha256 serve announces, as `zoo verify NAME` does
                with Archive(self.object_path(archive["sha256"]), read_once=True) as opened:
                    problems += [f"{ref}: {problem}" for problem in opened.verify(threads, lossy, files=lossy)]
        except ZooError as error:
            return [f"{ref}: {error}"]
        return problems

    def gc(self) -> list[tuple[Path, int]]:
        """Remove every object no manifest names, and dead work folders. Returns (object, bytes)
        removed. Refuses while a manifest is unreadable: what it names is unknown."""
        if self.storage is not None:
            return self._gc_remote()
        if not self.exists():
            return []
        self.entries()  # migrates an old layout and brings the index up to date first
        removed = []
        with self._locked():
            self._sweep_work()
            named = self._named_objects()
            # a model whose manifest names an archive that is not there: an archive whose header says
            # it is that model is kept (and all it names), for `zoo doctor` to give its manifest back
            lost = {f"{r['name']}@{r['revision']}:{r['variant']}" for _, r in self._all_manifests()
                    if not self.object_path(_archive_of(r)).is_file()}
            unnamed = [path for path in self._object_files() if path.name.removesuffix(OBJECT_SUFFIX) not in named]
            for path in unnamed if lost else []:
                if self._model_of(path) in lost:
                    named.add(path.name.removesuffix(OBJECT_SUFFIX))
                    named.update(self._archive_names({"objects": [{"role": "archive", "sha256": path.name.removesuffix(OBJECT_SUFFIX)}]}))
            for path in unnamed:
                if path.name.removesuffix(OBJECT_SUFFIX) not in named:
                    size = path.stat().st_size
                    path.unlink(missing_ok=True)
                    removed.append((path, size))
                    kill_point("gc-object")
            self._mend_index(self._all_manifests())  # what was collected is what the manifests say: so must the index
        return removed

    def _mend_index(self, manifests: list[tuple[Path, dict[str, Any]]]) -> None:
        """Rebuild an index that disagrees with the manifests, said in a warning: `zoo gc` and `zoo
        verify` read every manifest anyway, and an index whose manifest was deleted by hand listed the
        model after gc had collected its objects (doctor says the same as a finding). Caller holds the lock."""
        reason = self._index_problem(manifests)
        if reason is None:
            return
        try:
            count = self.rebuild_index()
        except StoreError as error:
            warnings.warn(f"{error} ({reason}); commands read the manifests meanwhile", ZooWarning, stacklevel=3)
        else:
            warnings.warn(f"{self.catalogue}: {reason}; rebuilt from {count} manifests", ZooWarning, stacklevel=3)

    def doctor(self) -> list[str]:
        """Check the zoo and repair what can be repaired without losing anything; one line per finding."""
        if self.storage is not None:
            from zoo.hub.bucket_upkeep import doctor_bucket

            return doctor_bucket(self)
        findings: list[str] = []
        if not self.exists():
            return [f"{self.home}: no zoo here yet"]
        if self.archives.is_dir():
            self._refuse_a_foreign_folder()
            with self._locked():
                if self.archives.is_dir():
                    findings += self._migrate()
        with self._locked():
            findings += [f"{folder}: work folder of a process that is gone, removed" for folder in self._sweep_work()]
            placed = self._place_manifests()
            findings += placed
            problems: list[str] = []
            manifests = self._all_manifests(problems)
            findings += problems
            named: dict[str, list[str]] = {}
            for _, record in manifests:
                findings += self._mend_record(record)
                for item in record["objects"]:
                    named.setdefault(item["sha256"], []).append(f"{record['name']}@{record['revision']}:{record['variant']}")
                    path = self.object_path(item["sha256"])
                    if not path.is_file():
                        findings.append(Damage(f"{path}: missing; {named[item['sha256']][-1]} cannot be read (`zoo rm` it, or store it again)"))
                    elif path.stat().st_size != item["size"]:
                        findings.append(Damage(f"{path}: {path.stat().st_size} bytes where its manifest says {item['size']}: damaged "
                                               f"(`zoo verify {named[item['sha256']][-1]}`)"))
            unnamed = [path for path in self._object_files() if path.name.removesuffix(OBJECT_SUFFIX) not in named]
            # archives first: one given back its manifest names its objects again
            unnamed.sort(key=lambda path: not self._is_archive_of_a_model(path))
            for path in unnamed:
                sha256 = path.name.removesuffix(OBJECT_SUFFIX)
                if sha256 not in named:
                    try:
                        finding, restored = self._adopt(path, sha256)
                    except OSError as error:  # a full disk: said with the rest, the damaged manifest left in place
                        finding, restored = Damage(f"{path}: named by no manifest; cannot restore its manifest: {_reason(error)}"), set()
                    findings.append(finding)
                    for item in restored:
                        named.setdefault(item, []).append("restored")
            reason = ("it indexed manifests out of their places" if placed else None) or self._index_problem(manifests)
            if reason is not None:
                try:
                    count = self.rebuild_index()
                    findings.append(f"{self.catalogue}: {reason}; rebuilt from {count} manifests")
                except StoreError as error:  # a full disk, say: what was found and repaired before is still said
                    findings.append(Damage(f"{error} ({reason}); commands read the manifests meanwhile"))
            unreadable: list[str] = []
            self._all_manifests(unreadable)  # a damaged manifest its object could not restore
            findings = [Damage(line) if line in unreadable else line for line in findings]
        models = f"{len(manifests)} model{'' if len(manifests) == 1 else 's'}"
        return findings or [f"{self.home}: {models}, no problems found (every object there, of the size its manifest says; `zoo "
                            "verify` decodes them)"]

    def _mend_record(self, record: dict[str, Any]) -> list[str]:
        """A manifest's list of objects held to its archive, which names them (docs/STORE.md: the
        archive, then every object it names), as _adopt lists a restored manifest's: one it leaves
        out (which `zoo gc` would collect as no model's) is listed again; one it names that the
        archive does not and the zoo lacks (a digit changed by hand) is dropped, where it had the
        model called unreadable, and `zoo rm` of a model that reads whole advised; a sound object
        recorded at another size is recorded at its own, where it was called damaged on every run.
        Damage is never written into a manifest (_wrong_record). Caller holds the lock."""
        ref = f"{record['name']}@{record['revision']}:{record['variant']}"
        header = self._shell_header(record)
        if header is None:  # no archive to hold the list to: what is wrong is said as damage
            return []
        named = object_names(header)
        findings: list[str] = []
        added = []
        for sha256 in sorted(named - {o["sha256"] for o in record["objects"]}):
            path = self.object_path(sha256)
            if path.is_file():
                added.append({"role": "object", "sha256": sha256, "size": path.stat().st_size})
            else:
                findings.append(Damage(f"{path}: missing; {ref} cannot be read (`zoo rm` it, or store it again)"))
        kept, dropped, resized = [], [], []
        for item in record["objects"]:
            wrong = self._wrong_record(item, header, named)
            if wrong == "unnamed":
                dropped.append(item["sha256"])
                continue
            if wrong == "size":
                resized.append((item, self.object_path(item["sha256"]).stat().st_size))
                item = {**item, "size": resized[-1][1]}
            kept.append(item)
        if not (added or dropped or resized):
            return findings
        manifest = self.manifest_path(record["name"], record["revision"], record["variant"])
        said = []
        if added:
            said.append(f"left out {len(added)} of the objects its archive names")
        if dropped:
            said.append(f"named {len(dropped)} object{'s' if len(dropped) > 1 else ''} that its archive does not name and the zoo lacks "
                        f"({dropped[0][:16]}...{' and more' if len(dropped) > 1 else ''}; edited by hand?)")
        if resized:
            (item, size), more = resized[0], " and more" if len(resized) > 1 else ""
            said.append(f"recorded {self.object_path(item['sha256']).name[:16]}...{more} at {item['size']} bytes, where it is {size} and "
                        "sound")
        where = f"{manifest}: the manifest of {ref} {'; it '.join(said)}"
        record["objects"] = [*kept, *added]  # for the caller, whether or not written
        record["stored_bytes"] = sum(item["size"] for item in record["objects"])
        only_added = not (dropped or resized)
        try:
            self.dirty.touch()
            self._publish_manifest(record)
        except OSError as error:  # a full disk: said with the rest, the manifest left as it was
            findings.append(Damage(f"{where}; {'cannot list them again' if only_added else 'cannot mend it'}: {_reason(error)}"))
        else:
            findings.append(f"{where}: {'listed again' if only_added else 'mended from its archive'}")
        return findings

    def _wrong_record(self, item: dict[str, Any], header: dict[str, Any], named: set[str]) -> str | None:
        """How a manifest's entry for an object is wrong where the object is not: "unnamed" where
        the zoo lacks it and the model's archive (`header`, naming `named`) does not name it (the
        model reads without it), "size" where it records a sound object at another size than its
        own: the archive, whose bytes hash to its name, or an object whose checksums hold and that
        the archive names as it is coded. None where the object is missing, damaged or as recorded."""
        from zoo.container.objects import OBJECT_TENSOR, checksum_problems, names_otherwise, read_object_header

        path = self.object_path(item["sha256"])
        if not path.is_file():
            return "unnamed" if item["role"] != "archive" and item["sha256"] not in named else None
        if path.stat().st_size == item["size"]:
            return None
        if item["role"] == "archive":
            return "size" if sha256_file(path) == item["sha256"] else None
        if item["sha256"] not in named:
            return None
        try:
            entry = read_object_header(path)["tensors"][OBJECT_TENSOR]
        except (ZooError, OSError):
            return None
        return "size" if not names_otherwise(header, item["sha256"], entry) and not checksum_problems(path) else None

    def _place_manifests(self) -> list[str]:
        """A manifest found where its name does not say (moved or edited by hand): a copy of the one
        in its place is removed, any other is kept aside for a person (its models then get their
        manifests back from their archives' headers). Caller holds the lock."""
        findings = []
        for path in self._manifest_files():
            try:
                record = check_record(json.loads(path.read_bytes()))
            except (OSError, ValueError):
                continue  # damaged: reported, and restored from its object, below
            proper = self.manifest_path(record["name"], record["revision"], record["variant"])
            if path == proper:
                continue
            try:
                findings.append(self._place_manifest(path, record, proper))
            except OSError as error:  # a full disk: said with the rest, the manifest left where it was
                findings.append(Damage(f"{path}: a manifest out of its place ({self._relative(proper)}); cannot move it: {_reason(error)}"))
        return findings

    def _place_manifest(self, path: Path, record: dict[str, Any], proper: Path) -> str:
        ref = f"{record['name']}@{record['revision']}:{record['variant']}"
        try:
            copy = json.loads(proper.read_bytes()) == record
        except (OSError, ValueError):
            copy = False
        if copy:
            path.unlink()
            return f"{path}: a copy of the manifest of {ref}, out of its place; removed"
        if not proper.exists() and self._archive_says(record):
            proper.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, proper)
            return f"{path}: the manifest of {ref}, out of its place; moved back to {self._relative(proper)}"
        return f"{path}: a manifest of {ref} out of its place ({self._relative(proper)}); kept as {self._keep_aside(path)}"

    def _archive_says(self, record: dict[str, Any]) -> bool:
        """Whether the header of the archive a manifest names says it is the model the manifest
        names: a manifest only moved, not edited to name another model (whose place it would take
        with this one's archive)."""
        try:
            sha256 = next(item["sha256"] for item in record["objects"] if item["role"] == "archive")
            metadata, _ = describe_files(self.object_path(sha256))
        except (StopIteration, ZooError, OSError):
            return False
        claimed = metadata.get("zoo") if isinstance(metadata.get("zoo"), dict) else {}
        pipeline = str(metadata.get("pipeline", ""))
        return (claimed.get("name"), claimed.get("revision") or DEFAULT_REVISION, variant_of(pipeline) if pipeline else LOSSLESS) \
            == (record["name"], record["revision"], canonical_variant(record["variant"]))

    def _index_problem(self, manifests: list[tuple[Path, dict[str, Any]]]) -> str | None:
        """What is wrong with the index, measured against the manifests, or None. Each row is
        compared with its manifest: a flipped byte in a row (another name) passed a quick check
        and a count, and `zoo rm` of that name removed another model."""
        try:
            with closing(catalogue.connect(self.catalogue)) as connection:
                if connection.execute("PRAGMA integrity_check").fetchone()[0] != "ok":  # a table and its index disagreeing too
                    return "damaged"
                rows = connection.execute("SELECT manifest, name, revision, variant, commit_sha, object FROM models").fetchall()
                stamped = self._stamp_holds(connection)
        except (sqlite3.Error, OSError) as error:
            return str(error)
        if self.dirty.exists():
            return "behind the manifests (a command that changed them did not finish updating it)"
        if len(rows) != len(manifests):
            return f"indexes {len(rows)} models where {len(manifests)} manifests are"
        said = {(self._relative(path), r["name"], r["revision"], r["variant"], r["commit"], _archive_of(r)) for path, r in manifests}
        if set(map(tuple, rows)) != said:
            return "damaged: its rows disagree with the manifests"
        if not stamped:
            return "not the index the last change to the manifests left (an older copy put back?)"
        return None

    @staticmethod
    def _model_of(path: Path) -> str | None:
        """NAME@REVISION:VARIANT of the model whose archive `path` is, as its header says; None
        for an object of a tensor, or one that cannot be read."""
        try:
            record = _claimed_record(path)
        except (ZooError, OSError, KeyError, TypeError):
            return None
        return f"{record['name']}@{record['revision']}:{record['variant']}"

    @staticmethod
    def _is_archive_of_a_model(path: Path) -> bool:
        """Whether the header says which model this is (compress_into's metadata; an object of a
        tensor has none). Read whole: its keys are sorted, so a model of many files or tensors has
        the metadata far in (a Trainer folder's at 76 KB), and a look at the first 64 KiB reported
        such a model's objects as `zoo gc`'s before its manifest was given back, in one run."""
        from zoo.container.format import ArchiveFile

        try:
            opened = ArchiveFile(path)
        except (ZooError, OSError):
            return False
        try:
            metadata = opened.header.get("metadata")
            return isinstance(metadata, dict) and isinstance(metadata.get("zoo"), dict)
        finally:
            opened.close()

    def _adopt(self, path: Path, sha256: str) -> tuple[str, set[str]]:
        """An object no manifest names: given back its manifest when its header says which model
        it is and that name is free, else reported for `zoo gc`. Caller holds the lock. Returns
        the finding and the objects a restored manifest names."""
        size = path.stat().st_size
        try:
            record = _claimed_record(path)
            from zoo.container.format import ArchiveFile

            opened = ArchiveFile(path)
            try:
                parts = {item: self.object_path(item).stat().st_size for item in object_names(opened.header)}
            finally:
                opened.close()
        except (ZooError, OSError, KeyError, TypeError):
            return f"{path}: {human_size(size)} that no manifest names and whose header names no model; `zoo gc` removes it", set()
        record["objects"] = [{"role": "archive", "sha256": sha256, "size": size}] + [
            {"role": "object", "sha256": item, "size": parts[item]} for item in sorted(parts)]
        record["stored_bytes"] = size + sum(parts.values())
        ref = f"{record['name']}@{record['revision']}:{record['variant']}"
        manifest = self.manifest_path(record["name"], record["revision"], record["variant"])
        damaged = False
        if manifest.exists():
            try:
                present = self.object_path(_archive_of(self._read_manifest(manifest))).is_file()
            except StoreError:
                present = False
            if present:
                return (f"{path}: {human_size(size)}, a copy of {ref} that its manifest does not name (replaced, or a write that "
                        "never finished); `zoo gc` removes it"), set()
            damaged = True  # unreadable, or naming an archive that is not there (one wrong digit): this one is the model
        self.dirty.touch()
        # the damaged one (or one of a newer zoo's format) is kept for a person, never lost: copied
        # aside first, so that where the new one cannot be written (a full disk) it stays in place
        kept = (self._keep_aside(manifest, f"{manifest.parent.parent.name}@{manifest.parent.name}@{manifest.name}",
                                 copy=manifest.is_file() and not manifest.is_symlink())  # a folder there is moved
                if damaged else None)
        try:
            self._publish_manifest(record)
        except BaseException:
            if kept is not None and manifest.exists():  # the damaged one is still in place: no copy of it is left behind
                kept.unlink(missing_ok=True)
            raise
        repair = f"damaged manifest replaced (the old one kept as {kept})" if damaged else "manifest restored"
        return f"{path}: named by no manifest; its header says it is {ref}: {repair}", set(parts)

    def _migrate(self) -> list[str]:
        """Move a zoo of the old layout (archives/*.zoo, the catalogue as the record) to objects
        and manifests. Each archive gets its manifest from its catalogue row, or from its own header
        and file name when the row is gone; it leaves archives/ only once its manifest exists, so
        a kill midway is resumed by the next open. Caller holds the lock."""
        rows = legacy_records(self.catalogue)
        findings = []
        for path in sorted(self.archives.glob(f"*{OBJECT_SUFFIX}")):
            try:
                findings.append(self._migrate_one(path, rows.get(path.name)))
            except StoreError:
                raise
            except ZooError as error:  # the reader's verdict on the file, not a failure of ours
                findings.append(f"{path}: not a readable archive ({error}); kept as {self._keep_aside(path)}")
            except OSError as error:  # a full disk, say: stop here, the next open goes on
                raise StoreError(f"{self.home}: cannot move {path.name} to the new layout: {_reason(error)}; it stays where it is, "
                                 "and the next command tries again") from None
        for path in sorted(self.archives.iterdir()) if self.archives.is_dir() else []:  # files, and folders too (else archives/ stays)
            try:
                findings.append(f"{path}: not an archive; kept as {self._keep_aside(path)}")
            except OSError as error:  # archives/ stays, and the next command tries again
                findings.append(f"{path}: not an archive, and it cannot be moved to unreadable/ ({_reason(error)}); it stays where it is")
        with suppress(OSError):
            self.archives.rmdir()
        with suppress(StoreError):
            self.rebuild_index()  # else the next read rebuilds it
        return findings

    def _say_migrated(self, findings: list[str]) -> None:
        """What a migration did, said once as the command that ran it goes on (doctor, which runs
        it itself, lists the findings): the models moved, and each thing a person should look at
        (a file kept aside in unreadable/, a model named from its header, its catalogue row gone)."""
        if not findings:  # an empty archives/ folder: nothing was moved
            return
        moved = [line for line in findings if ": moved to " in line]
        notable = [line for line in findings if ": moved to " not in line or line.endswith("read from its header)")]
        said = f"{len(moved)} model{'s' if len(moved) != 1 else ''}" + (f", {len(notable)} to look at:" if notable else "")
        warnings.warn(f"{self.home}: the zoo's old layout was moved to objects and manifests (docs/STORE.md): {said}", ZooWarning,
                      stacklevel=3)
        for line in notable[:20]:
            warnings.warn(line, ZooWarning, stacklevel=3)
        if len(notable) > 20:
            warnings.warn(f"... and {len(notable) - 20} more (`zoo doctor` lists the zoo's state)", ZooWarning, stacklevel=3)

    def _keep_aside(self, path: Path, name: str | None = None, copy: bool = False) -> Path:
        """Where a file the zoo cannot read waits for a person, under `name` (default: its own):
        never deleted. Moved there, or with `copy` copied (a copy cut short is removed)."""
        folder = self.home / "unreadable"
        folder.mkdir(exist_ok=True)
        name = name or path.name
        aside = folder / name
        if aside.exists():
            aside = folder / f"{name}.{os.urandom(4).hex()}"
        if not copy:
            os.replace(path, aside)
            return aside
        try:
            shutil.copyfile(path, aside)
        except BaseException:
            aside.unlink(missing_ok=True)
            raise
        return aside

    def _migrate_one(self, path: Path, row: dict[str, Any] | None) -> str:
        sha256, size = sha256_file(path), path.stat().st_size
        if row is not None:
            record = row
        else:
            metadata, files = describe_files(path)
            claimed = metadata.get("zoo") if isinstance(metadata.get("zoo"), dict) else {}
            legacy = LEGACY_NAME.fullmatch(path.name)
            name = claimed.get("name") or (legacy["name"].replace("--", "/") if legacy else "")
            try:
                check_name(name)
            except InputError:
                name = f"recovered-{sha256[:12]}"
            record = record_of(metadata, files, name, claimed.get("revision") or DEFAULT_REVISION, claimed.get("commit"),
                             metadata.get("source"), path.stat().st_mtime)
        record["objects"] = [{"role": "archive", "sha256": sha256, "size": size}]
        record["stored_bytes"] = size
        existing = self.manifest_path(record["name"], record["revision"], record["variant"])
        if existing.is_file():
            held = self._read_manifest(existing)["objects"]
            if all(o["sha256"] != sha256 for o in held):  # another archive holds that name: keep both
                record["revision"] = f"{record['revision']}-recovered-{sha256[:8]}"
        target = self.object_path(sha256)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.workspace() as folder:
                copy = folder / "object.zoo"
                try:
                    os.link(path, copy)
                except OSError:
                    shutil.copyfile(path, copy)
                fsync_path(copy)
                os.chmod(copy, 0o444)
                os.replace(copy, target)
            fsync_path(target.parent)
        ref = f"{record['name']}@{record['revision']}:{record['variant']}"
        if not self.manifest_path(record["name"], record["revision"], record["variant"]).is_file():
            self._publish_manifest(record)
        kill_point("migrate-archive")
        path.unlink()
        return f"{path}: moved to {target} as {ref}" + ("" if row is not None else " (its catalogue row was gone: read from its header)")


# How often a command re-reads a remote zoo's list of manifests (a server answers many requests).
SYNC_SECONDS = 5.0
_REMOTE_ZOOS: dict[Path, Any] = {}  # this machine's objects folder of a remote zoo -> its storage
_REMOTE_READERS: dict[Path, Any] = {}


class _RemoteObject:
    """An object of a zoo on object storage, read by range (zoo.container.format.REMOTE_OBJECTS).
    Its size and region are asked once per process, and asked again where a read failed and the
    bucket's object is another since (forget): collected and stored again by another pipeline, or
    cut short and put back, a server kept reading it at the old offsets until it was restarted."""

    def __init__(self, storage: Any, key: str) -> None:
        self.storage, self.key = storage, key
        self.where = f"{storage.url}/{key}"
        self._region: tuple[int, int] | None = None
        self._info: Any = None  # its KeyInfo (size, age, ETag) when the size was asked

    def region(self) -> tuple[int, int]:
        region = self._region
        if region is None:
            from zoo.container.format import PREAMBLE, parse_region

            size = self.size()
            if size is None:
                raise MissingObjectError(f"{self.where}: object is missing from the zoo (removed since, or lost: "
                                         "`zoo doctor` names the models it breaks)")
            region = self._region = parse_region(self.storage.read_range(self.key, 0, PREAMBLE.size), size, self.where)
        return region

    def read(self, offset: int, length: int) -> bytes:
        return self.storage.read_range(self.key, offset, length)

    def size(self) -> int | None:
        """The object's bytes in the bucket (asked once), or None where it is missing."""
        if self._info is None:
            self._info = self.storage.stat(self.key) or False
        return self._info.size if self._info else None

    def forget(self) -> bool:
        """Whether the bucket's object is not the one whose size and region were taken (another
        size, age or ETag, or gone or back): they are then taken again at the next read."""
        if self._info is None:
            return False
        now = self.storage.stat(self.key) or False
        if now == self._info:
            return False
        self._region, self._info = None, None
        return True


def _remote_object(path: Path) -> _RemoteObject | None:
    storage = _REMOTE_ZOOS.get(path.parent.parent)
    if storage is None:
        return None
    reader = _REMOTE_READERS.get(path)
    if reader is None:
        reader = _REMOTE_READERS[path] = _RemoteObject(storage, f"objects/sha256/{path.parent.name}/{path.name}")
    return reader


def _name_objects(record: dict[str, Any], shell: Path, shell_name: str, sizes: dict[str, int], where: str, lacking_why: str) -> None:
    """Fill a manifest's `objects` and `stored_bytes` for the model archive `shell`, named
    `shell_name`, from `sizes` (object name -> size), which must hold every object the archive
    names: one it lacks is refused, as objects `lacking_why` (the error names `where`)."""
    from zoo.container.format import ArchiveFile

    opened = ArchiveFile(shell)
    try:
        named = object_names(opened.header)
    finally:
        opened.close()
    lacking = named - sizes.keys()
    if lacking:
        raise StoreError(f"{where}: names {len(lacking)} objects {lacking_why} ({min(lacking)[:16]}...)")
    size = shell.stat().st_size
    record["objects"] = [{"role": "archive", "sha256": shell_name, "size": size}] + [
        {"role": "object", "sha256": item, "size": sizes[item]} for item in sorted(named)]
    record["stored_bytes"] = size + sum(sizes[item] for item in named)


def _same_file(one: Path, other: Path) -> bool:
    """Whether two paths are one file (a build's link to an object of the zoo)."""
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False


# What a rename fails with where its destination is in the way (a folder in a file's place).
_IN_THE_WAY = {errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY}


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        # a rename (os.replace) names its destination second: said alone where it is in the way (its
        # source is most often a temporary of ours, which no one knows), else both, either may be at fault
        where = error.filename
        if error.filename2 is not None:
            where = error.filename2 if error.errno in _IN_THE_WAY else f"{error.filename} -> {error.filename2}"
        return error.strerror + (f": {where}" if where else "")
    return str(error)


def resolve_archive(ref: str) -> Path | None:
    """The archive path of a zoo name (NAME[@REVISION][:VARIANT]); None when it is not in the zoo."""
    store = Store()
    # a path (`/x.zoo`, `./m`) is never a zoo name: the zoo is not consulted for it
    if not isinstance(ref, str) or not NAME_PATTERN.fullmatch(parse_ref(ref)[0]):
        return None
    try:  # a ZOO_HOME that is no zoo holds no model: a command about a path says what is wrong with the path
        found = store.readable(ref) if store.exists() else []
    except ZooError:
        return None
    if found:
        require_archive(store, found[0])
    return found[0].archive if found else None


def require_archive(store: Store, entry: Entry) -> None:
    """A model's archive is here (fetched first from a bucket), or MissingObjectError says so: not
    "<the archive's path>: no such file, and no model of that name", as the model is there."""
    if not entry.archive.is_file() and store.existing_object(entry.archive.name.removesuffix(OBJECT_SUFFIX), archive=True) is None:
        raise MissingObjectError(f"{entry.ref}: its archive {entry.archive.name[:16]}... is missing from the zoo "
                                 "(`zoo doctor` says what that breaks; `zoo rm` it, or store it again)")
