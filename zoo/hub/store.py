"""The local zoo: archives under ZOO_HOME and their catalogue in SQLite.

Layout::

    ZOO_HOME/catalogue.sqlite     one row per stored model variant, one per file
    ZOO_HOME/archives/*.zoo       the archives; a file name is never reused
    ZOO_HOME/work/<job>/          temporary work, each folder locked by the process that owns it

An archive enters the store by an atomic rename made inside the write transaction that records
it, so a reader sees either the old state or the new one. A process killed midway leaves at
worst an unreferenced archive or a work folder whose lock nobody holds; the next writer removes
both, under the same write lock, so it cannot mistake another process's live work for debris.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import InputError, OutputExistsError, ZooError

LOSSLESS = "lossless"
DEFAULT_REVISION = "main"
LFS_MIN_BYTES = 10 << 20  # the Hub keeps files this large in LFS whatever their type
SCHEMA_VERSION = 1
# The Hub's own rule for repo ids, so that every stored name can also be served.
NAME_PATTERN = re.compile(r"(?:[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?/)?[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?", re.ASCII)
_REVISION = re.compile(r"[\w.-]+(?:/[\w.-]+)*", re.ASCII)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    revision TEXT NOT NULL,
    variant TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    archive TEXT NOT NULL UNIQUE,
    pipeline TEXT NOT NULL,
    source TEXT,
    original_bytes INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    created REAL NOT NULL,
    quality TEXT,
    UNIQUE (name, revision, variant)
);
CREATE TABLE IF NOT EXISTS files (
    model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    served_sha256 TEXT NOT NULL,
    git_oid TEXT NOT NULL,
    lfs INTEGER NOT NULL,
    lossless INTEGER NOT NULL,
    PRIMARY KEY (model_id, path)
);
"""


def zoo_home() -> Path:
    """ZOO_HOME, or zoo/ under the user's cache folder (XDG_CACHE_HOME, else ~/.cache)."""
    if os.environ.get("ZOO_HOME"):
        return Path(os.environ["ZOO_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "zoo"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or "--" in name or ".." in name or name.endswith(".git"):
        raise InputError(f"{name!r} is not a usable model name: use 'name' or 'org/name' with letters, digits, '-', '_' or '.' (choose one with --name)")
    return name


def check_revision(revision: str) -> str:
    if not isinstance(revision, str) or not _REVISION.fullmatch(revision) or ".." in revision:
        raise InputError(f"{revision!r} is not a usable revision name")
    return revision


def variant_of(pipeline_spec: str) -> str:
    """A short label for a pipeline: 'lossless' for the default, else its stages without unset
    parameters and without the default leaf stages ('truncate:bits=6')."""
    from zoo.codecs.pipeline import DEFAULT_SPEC, Pipeline

    pipeline, default = Pipeline.parse(pipeline_spec), Pipeline.parse(DEFAULT_SPEC)
    if pipeline == default:
        return LOSSLESS
    leaf_stages = (pipeline.grouping, *pipeline.bytes_stages)
    stages = pipeline.array_stages + (() if leaf_stages == (default.grouping, *default.bytes_stages) else leaf_stages)
    parts = []
    for config in (stage.get_config() for stage in stages):
        arguments = ",".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in config.items() if k != "id" and v is not None)
        parts.append(config["id"] + (f":{arguments}" if arguments else ""))
    return "|".join(parts)


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """NAME[@REVISION][:VARIANT] -> (name, revision, variant). Git refs cannot hold ':', names neither."""
    head, colon, variant = ref.partition(":")
    name, at, revision = head.partition("@")
    return name, (revision if at else None), (variant if colon else None)


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def git_blob_hasher(content_size: int) -> Any:
    """A sha1 primed the way git primes a blob's id; feed it the content to get the id."""
    return hashlib.sha1(f"blob {content_size}\0".encode())


@dataclass
class StoredFile:
    path: str
    size: int
    sha256: str  # of the original bytes
    served_sha256: str  # of the bytes the archive decodes to (the same when lossless)
    git_oid: str
    lfs: bool
    lossless: bool

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.served_sha256, self.size))


@dataclass
class Entry:
    name: str
    revision: str
    variant: str
    commit: str
    archive: Path
    pipeline: str
    source: str | None
    original_bytes: int
    stored_bytes: int
    created: float
    quality: dict[str, Any] | None = None
    files: list[StoredFile] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.revision}:{self.variant}"

    @property
    def ratio(self) -> float:
        return self.stored_bytes / self.original_bytes if self.original_bytes else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "revision": self.revision, "variant": self.variant, "commit": self.commit,
            "archive": str(self.archive), "pipeline": self.pipeline, "source": self.source,
            "original_bytes": self.original_bytes, "stored_bytes": self.stored_bytes, "ratio": self.ratio,
            "created": self.created, "quality": self.quality,
        }


def _describe_files(archive_path: Path) -> tuple[dict[str, Any], list[StoredFile]]:
    """The archive's metadata and, per file, the hashes the catalogue keeps. Files that decoding
    does not give back bit for bit, and small files (whose git id hashes their content), are
    decoded once here so that serving never has to hash them."""
    from zoo.container.reader import Archive

    described = []
    with Archive(archive_path) as archive:
        for entry in archive.files():
            lossless = bool(entry.get("lossless"))
            lfs = entry["kind"] != "blob" or entry["size"] >= LFS_MIN_BYTES
            served, oid = (entry["sha256"] if lossless else None), None
            if not lossless or not lfs:
                sha256, sha1 = hashlib.sha256(), git_blob_hasher(entry["size"])
                for piece in archive.iter_file(entry["path"]):
                    sha256.update(piece)
                    sha1.update(piece)
                served, oid = sha256.hexdigest(), sha1.hexdigest()
            if lfs:  # git stores the pointer, so the git id is the pointer's
                pointer = lfs_pointer(served, entry["size"])
                hasher = git_blob_hasher(len(pointer))
                hasher.update(pointer)
                oid = hasher.hexdigest()
            described.append(StoredFile(entry["path"], entry["size"], entry["sha256"], served, oid, lfs, lossless))
        return archive.metadata(), described


class Store:
    """The zoo at `home` (default: zoo_home()). Every method opens its own connection, so one
    Store may be used from many threads and by several processes at once."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home) if home is not None else zoo_home()
        self.catalogue = self.home / "catalogue.sqlite"
        self.archives = self.home / "archives"
        self.work = self.home / "work"

    # -- connections ------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.catalogue.is_file()

    def _connect(self) -> sqlite3.Connection:
        try:
            for folder in (self.home, self.archives, self.work):
                folder.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.catalogue, timeout=60, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            raise ZooError(f"{self.home}: cannot open the zoo: {error}") from None
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA foreign_keys = ON")
        if connection.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            with self._transaction(connection):
                version = connection.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, SCHEMA_VERSION):
                    raise ZooError(f"{self.catalogue}: catalogue schema {version}; this zoo reads {SCHEMA_VERSION}")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # WAL lets `zoo serve` keep reading while a pull writes; it is a property of the file.
            connection.execute("PRAGMA journal_mode = WAL")
        return connection

    @contextmanager
    def _transaction(self, connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """A write transaction: IMMEDIATE takes the write lock up front, so two writers queue
        instead of failing halfway."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    # -- reading ----------------------------------------------------------------------------

    def _entry(self, connection: sqlite3.Connection, row: sqlite3.Row, with_files: bool) -> Entry:
        entry = Entry(
            row["name"], row["revision"], row["variant"], row["commit_sha"], self.archives / row["archive"], row["pipeline"],
            row["source"], row["original_bytes"], row["stored_bytes"], row["created"], json.loads(row["quality"]) if row["quality"] else None,
        )
        if with_files:
            for f in connection.execute("SELECT * FROM files WHERE model_id = ? ORDER BY rowid", (row["id"],)):
                entry.files.append(StoredFile(f["path"], f["size"], f["sha256"], f["served_sha256"], f["git_oid"], bool(f["lfs"]), bool(f["lossless"])))
        return entry

    def entries(self, name: str | None = None, with_files: bool = False) -> list[Entry]:
        if not self.exists():
            return []
        with closing(self._connect()) as connection:
            query = "SELECT * FROM models" + (" WHERE name = ?" if name is not None else "") + " ORDER BY name, revision, variant"
            rows = connection.execute(query, (name,) if name is not None else ()).fetchall()
            return [self._entry(connection, row, with_files) for row in rows]

    def matches(self, ref: str, with_files: bool = False) -> list[Entry]:
        """Entries a ref names, best first: without a revision 'main' comes first, without a
        variant the lossless one, then the most recent. A revision may also be the commit."""
        name, revision, variant = parse_ref(ref)
        found = [
            e for e in self.entries(name, with_files)
            if (revision is None or revision in (e.revision, e.commit)) and (variant is None or variant_match(variant, e))
        ]
        return sorted(found, key=lambda e: (revision is None and e.revision != DEFAULT_REVISION, variant is None and e.variant != LOSSLESS, -e.created))

    def resolve(self, ref: str, with_files: bool = False) -> Entry:
        found = self.matches(ref, with_files)
        if not found:
            raise InputError(f"{ref!r} is not in the zoo at {self.home} (see `zoo ls`)")
        return found[0]

    # -- writing ----------------------------------------------------------------------------

    @contextmanager
    def workspace(self) -> Iterator[Path]:
        """A private folder inside the store for work that may later enter it (same file system,
        so entering is a rename). Locked while in use; removed afterwards whatever happens."""
        with closing(self._connect()):
            pass  # creates the store on first use
        folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.work))
        # Locked under another name, then renamed: a sweeper never sees an unlocked `.lock`.
        lock = open(folder / ".lock-pending", "w")  # noqa: SIM115 - held for as long as the folder is in use
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            os.replace(folder / ".lock-pending", folder / ".lock")
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            lock.close()

    def exists_ref(self, name: str, revision: str, variant: str) -> Entry | None:
        found = [e for e in self.entries(name) if e.revision == revision and e.variant == variant]
        return found[0] if found else None

    def add(self, archive: str | os.PathLike[str], name: str, revision: str = DEFAULT_REVISION, *, commit: str | None = None,
            source: str | None = None, force: bool = False, move: bool = False) -> Entry:
        """Record an archive in the zoo. With move=True the file (which must lie in this store's
        work folder) is renamed into place; otherwise it is copied first."""
        check_name(name)
        check_revision(revision)
        archive = Path(archive)
        metadata, files = _describe_files(archive)
        pipeline = str(metadata.get("pipeline", ""))
        variant = variant_of(pipeline) if pipeline else LOSSLESS
        if variant != LOSSLESS or not (commit and re.fullmatch(r"[0-9a-f]{40}", commit)):
            # A lossy variant is other content than upstream's commit: give it a commit of its own.
            commit = _derived_commit(name, revision, variant, files)
        quality = metadata.get("verify") if isinstance(metadata.get("verify"), dict) else None
        if move:
            self._enter(archive, name, revision, variant, commit, pipeline, source, quality, files, force)
        else:
            with self.workspace() as folder:
                shutil.copyfile(archive, folder / "copy.zoo")
                self._enter(folder / "copy.zoo", name, revision, variant, commit, pipeline, source, quality, files, force)
        return self.resolve(f"{name}@{revision}:{variant}", with_files=True)

    def _enter(self, archive: Path, name: str, revision: str, variant: str, commit: str, pipeline: str, source: str | None,
               quality: dict[str, Any] | None, files: list[StoredFile], force: bool) -> None:
        final = self.archives / f"{name.replace('/', '--')}-{os.urandom(6).hex()}.zoo"
        replaced = None
        with closing(self._connect()) as connection, self._transaction(connection):
            old = connection.execute("SELECT id, archive FROM models WHERE name = ? AND revision = ? AND variant = ?",
                                     (name, revision, variant)).fetchone()
            if old is not None and not force:
                raise OutputExistsError(f"{name}@{revision}:{variant} is already in the zoo; pass --force to replace it")
            self._sweep(connection)
            os.replace(archive, final)
            try:
                if old is not None:
                    connection.execute("DELETE FROM models WHERE id = ?", (old["id"],))
                    replaced = self.archives / old["archive"]
                cursor = connection.execute(
                    "INSERT INTO models (name, revision, variant, commit_sha, archive, pipeline, source, original_bytes,"
                    " stored_bytes, created, quality) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, revision, variant, commit, final.name, pipeline, source, sum(f.size for f in files),
                     final.stat().st_size, time.time(), json.dumps(quality) if quality else None),
                )
                connection.executemany(
                    "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(cursor.lastrowid, f.path, f.size, f.sha256, f.served_sha256, f.git_oid, f.lfs, f.lossless) for f in files],
                )
            except BaseException:
                final.unlink(missing_ok=True)
                raise
        if replaced is not None:
            replaced.unlink(missing_ok=True)  # readers that still hold it open keep reading it

    def remove(self, ref: str, every: bool = False) -> list[Entry]:
        found = self.matches(ref)
        if not found:
            raise InputError(f"{ref!r} is not in the zoo at {self.home} (see `zoo ls`)")
        if len(found) > 1 and not every:
            names = ", ".join(e.ref for e in found)
            raise InputError(f"{ref!r} names {len(found)} entries ({names}); name one, or pass --all")
        chosen = found if every else found[:1]
        with closing(self._connect()) as connection, self._transaction(connection):
            for entry in chosen:
                connection.execute("DELETE FROM models WHERE archive = ?", (entry.archive.name,))
        for entry in chosen:
            entry.archive.unlink(missing_ok=True)
        return chosen

    def _sweep(self, connection: sqlite3.Connection) -> None:
        """Remove what killed processes left. Runs inside a write transaction: a live writer holds
        that lock from its rename until its commit, so an unreferenced archive here is debris."""
        referenced = {row[0] for row in connection.execute("SELECT archive FROM models")}
        for path in self.archives.iterdir():
            if path.name not in referenced:
                path.unlink(missing_ok=True)
        for folder in self.work.iterdir():
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


def quality_label(entry: Entry) -> str:
    """What `zoo ls` shows of an entry's quality: the evaluator's figures when it left some,
    'bit-exact' for a lossless variant (every file is checked against its sha256), else ''."""
    quality = entry.quality or {}
    figures = [f"{key} {value:.4g}" for key, value in quality.items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if isinstance(quality.get("summary"), str):  # zoo.evaluate writes one line meant for listings
        label = quality["summary"]
    elif not quality and entry.variant == LOSSLESS and all(f.lossless for f in entry.files):
        label = "bit-exact"
    else:
        label = " ".join(figures) or str(quality.get("kind", ""))
    if quality.get("passed") is False:
        label += " (failed)"
    return label


def variant_match(wanted: str, entry: Entry) -> bool:
    """Whether a ref's VARIANT names `entry`: its stored label, its full pipeline, or a spec as the
    user typed it (`l2:target_ratio=10` for the stored `l2:target_ratio=10,tune=0`)."""
    if wanted in (entry.variant, entry.pipeline) or (wanted == LOSSLESS and entry.variant == LOSSLESS):
        return True
    try:
        return variant_of(wanted) == entry.variant
    except (ZooError, ValueError, TypeError):  # not a pipeline spec zoo can read: it names no variant
        return False


def _derived_commit(name: str, revision: str, variant: str, files: list[StoredFile]) -> str:
    digest = hashlib.sha1(json.dumps([name, revision, variant, [(f.path, f.served_sha256) for f in files]]).encode())
    return digest.hexdigest()


def resolve_archive(ref: str) -> Path | None:
    """The archive path of a zoo name (NAME[@REVISION][:VARIANT]); None when it is not in the zoo."""
    store = Store()
    if not isinstance(ref, str) or not store.exists():
        return None
    try:
        found = store.matches(ref)
    except ZooError:
        return None
    return found[0].archive if found else None
