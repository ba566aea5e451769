"""`zoo serve`: the part of the Hugging Face Hub API that huggingface_hub and transformers use,
answered from the zoo, with every file decoded as it streams.

Routes (repo ids are `name` or `org/name`; revisions are URL-quoted whole)::

    GET       /api/models/{repo}[/revision/{rev}]      model info: sha (40 hex), siblings
    GET       /api/models/{repo}/tree/{rev}[/{path}]   path, size, oid, lfs
    HEAD|GET  /{repo}/resolve/{rev}/{file}             the decoded file; Range; X-Repo-Commit; ETag

A revision is a branch name, a stored entry's commit, or `REVISION:VARIANT`. Nothing in this
module ever opens a path taken from a request: files are looked up by name in the catalogue
and read out of the archive it names.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import sys
import threading
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from zoo.container.reader import Archive
from zoo.errors import ZooError
from zoo.hub.store import DEFAULT_REVISION, NAME_PATTERN, Entry, Store, StoredFile

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_SOCKET_TIMEOUT = 120  # seconds a silent client may hold a connection thread


class HubError(Exception):
    """An answer other than 200, with the X-Error-Code huggingface_hub maps to its exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


class ZooServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], store: Store, token: str | None = None, quiet: bool = False,
                 decode_threads: int = 2) -> None:
        self.store, self.token, self.quiet, self.decode_threads = store, token, quiet, decode_threads
        self._archives: dict[Path, Archive] = {}
        self._archives_lock = threading.Lock()
        super().__init__(address, ZooHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    def archive(self, entry: Entry) -> Archive:
        """Archives stay open between requests; the header is parsed once. An archive dropped
        from this cache is never closed here: a stream still reading it closes it when done."""
        with self._archives_lock:
            opened = self._archives.get(entry.archive)
            if opened is None:
                if len(self._archives) >= 64:
                    self._archives.clear()
                opened = self._archives[entry.archive] = Archive(entry.archive)
            return opened


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _segments(raw_path: str) -> list[str]:
    """Decoded path segments; refuses anything that could climb out of a folder, however encoded."""
    segments = [unquote(part) for part in raw_path.split("/")[1:]]
    for segment in segments:
        twice = unquote(segment)
        if any(bad in text for text in (segment, twice) for bad in ("\\", "\x00")) or {segment, twice} & {".", ".."} \
                or any(part in (".", "..") for part in twice.split("/")):
            raise HubError(400, "path escapes its repository")
    return segments


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true")


def parse_range(header: str, size: int) -> tuple[int, int]:
    """One byte range as [start, end) within `size`. Malformed: 400; unsatisfiable: 416."""
    match = _RANGE.fullmatch(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        raise HubError(400, f"malformed Range header {header!r}: zoo serves one range, bytes=START-END")
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size
        if int(last) == 0:
            raise HubError(416, "empty suffix range", headers={"Content-Range": f"bytes */{size}"})
    else:
        start, end = int(first), size if last == "" else int(last) + 1
        if last != "" and end <= start:
            raise HubError(400, f"malformed Range header {header!r}: end before start")
    if start >= size:
        raise HubError(416, f"range starts at {start}, the file has {size} bytes", headers={"Content-Range": f"bytes */{size}"})
    return start, min(end, size)


class ZooHandler(BaseHTTPRequestHandler):
    server: ZooServer
    protocol_version = "HTTP/1.1"
    server_version = "zoo"
    timeout = _SOCKET_TIMEOUT

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    # -- dispatch ---------------------------------------------------------------------------

    def _answer(self, body: bool) -> None:
        self._streaming = False
        try:
            self._check_token()
            url = urlsplit(self.path)
            segments = _segments(url.path)
            if segments[:2] == ["api", "models"] and len(segments) > 2:
                self._api(segments[2:], parse_qs(url.query), body)
            elif "resolve" in segments[1:3]:
                self._resolve(segments, body)
            else:
                raise HubError(404, f"no such route: {url.path}")
        except HubError as error:
            self._error(error, body)
        except ZooError as error:
            # A damaged archive or catalogue: this request fails, the server goes on.
            self.log_error("%s", error)
            self._error(HubError(500, str(error)), body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # noqa: BLE001 - one request's bug must not reach the others
            self.log_error("internal error on %s: %r", self.path, error)
            self._error(HubError(500, f"internal error: {type(error).__name__}"), body)

    def _check_token(self) -> None:
        if self.server.token is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.server.token}".encode()):
            raise HubError(401, "this zoo needs a bearer token (set HF_TOKEN)")

    def _entry(self, repo: str, revision: str) -> Entry:
        store = self.server.store
        if not NAME_PATTERN.fullmatch(repo) or not store.matches(repo):
            raise HubError(404, f"repository {repo!r} is not in this zoo", "RepoNotFound")
        found = store.matches(f"{repo}@{revision}", with_files=True)
        if not found:
            raise HubError(404, f"revision {revision!r} of {repo!r} is not in this zoo", "RevisionNotFound")
        return found[0]

    def _split_repo(self, segments: list[str], keywords: tuple[str, ...]) -> tuple[str, str, list[str]]:
        """(repo, keyword, rest) for a repo id of one or two segments; the reading whose repo
        is in the zoo wins (a repo may be called 'tree')."""
        readings = [(n, segments[n]) for n in (2, 1) if len(segments) > n and segments[n] in keywords]
        for length, keyword in readings:
            repo = "/".join(segments[:length])
            if NAME_PATTERN.fullmatch(repo) and self.server.store.matches(repo):
                return repo, keyword, segments[length + 1:]
        if readings:
            raise HubError(404, f"repository {'/'.join(segments[:readings[0][0]])!r} is not in this zoo", "RepoNotFound")
        if len(segments) <= 2:
            return "/".join(segments), "", []
        raise HubError(404, "no such route")

    # -- API --------------------------------------------------------------------------------

    def _api(self, segments: list[str], query: dict[str, list[str]], body: bool) -> None:
        repo, keyword, rest = self._split_repo(segments, ("revision", "tree"))
        if keyword == "":
            entry = self._entry(repo, DEFAULT_REVISION)
            self._json(self._model_info(entry, _flag(query, "blobs")), body)
        elif keyword == "revision" and len(rest) == 1:
            entry = self._entry(repo, rest[0])
            self._json(self._model_info(entry, _flag(query, "blobs")), body)
        elif keyword == "tree" and rest:
            entry = self._entry(repo, rest[0])
            self._json(self._tree(entry, "/".join(rest[1:]), _flag(query, "recursive")), body)
        else:
            raise HubError(404, "no such route")

    def _model_info(self, entry: Entry, blobs: bool) -> dict[str, Any]:
        siblings = []
        for f in entry.files:
            sibling: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                sibling.update(size=f.size, blobId=f.git_oid)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.served_sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(sibling)
        return {
            "_id": entry.commit[:24], "id": entry.name, "modelId": entry.name, "sha": entry.commit,
            "private": False, "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": ["zoo"],
            "lastModified": _iso(entry.created), "createdAt": _iso(entry.created), "siblings": siblings,
            "zoo": {"revision": entry.revision, "variant": entry.variant, "pipeline": entry.pipeline},
        }

    def _tree(self, entry: Entry, folder: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{folder}/" if folder else ""
        if folder and not any(f.path.startswith(prefix) for f in entry.files):
            raise HubError(404, f"{folder!r} is not a folder of {entry.name!r}", "EntryNotFound")
        items: list[dict[str, Any]] = []
        folders_seen: set[str] = set()
        for f in entry.files:
            if not f.path.startswith(prefix):
                continue
            inner = f.path[len(prefix):]
            if not recursive and "/" in inner:
                sub = prefix + inner.split("/")[0]
                if sub not in folders_seen:
                    folders_seen.add(sub)
                    items.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": sub})
                continue
            item: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path}
            if f.lfs:
                item["lfs"] = {"oid": f.served_sha256, "size": f.size, "pointerSize": f.pointer_size}
            items.append(item)
        return items

    # -- files ------------------------------------------------------------------------------

    def _resolve(self, segments: list[str], body: bool) -> None:
        repo, _, rest = self._split_repo(segments, ("resolve",))
        if len(rest) < 2:
            raise HubError(404, "a resolve URL needs a revision and a file name")
        entry = self._entry(repo, rest[0])
        path = "/".join(rest[1:])
        stored = next((f for f in entry.files if f.path == path), None)
        if stored is None:
            raise HubError(404, f"{path!r} is not a file of {entry.name!r}", "EntryNotFound", {"X-Repo-Commit": entry.commit})
        self._stream(entry, stored, body)

    def _stream(self, entry: Entry, stored: StoredFile, body: bool) -> None:
        archive = self.server.archive(entry)  # opened before any header goes out: a bad archive is a clean 500
        start, end = 0, stored.size
        status = HTTPStatus.OK
        headers = {
            "X-Repo-Commit": entry.commit, "ETag": f'"{stored.served_sha256}"', "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if self.headers.get("Range") and body:
            start, end = parse_range(self.headers["Range"], stored.size)
            status = HTTPStatus.PARTIAL_CONTENT
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{stored.size}"
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        self._streaming = True
        if not body or start == end:
            return
        for piece in archive.iter_file(stored.path, start, end, threads=self.server.decode_threads):
            self.wfile.write(piece)

    # -- answers ----------------------------------------------------------------------------

    def _json(self, document: Any, body: bool) -> None:
        data = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, error: HubError, body: bool) -> None:
        if self._streaming:
            # Too late for a status: cutting the connection short is what every client reads as a
            # failed download (the length it was promised never arrives).
            self.close_connection = True
            return
        data = json.dumps({"error": str(error)}).encode()
        self.send_response(error.status)
        if error.code:
            self.send_header("X-Error-Code", error.code)
        # A header carries latin-1 on one line: anything else in the message becomes '?'.
        self.send_header("X-Error-Message", re.sub(r"[^\x20-\x7e]", "?", str(error)))
        for key, value in error.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(store: Store, host: str = "127.0.0.1", port: int = 0, token: str | None = None, quiet: bool = False,
                decode_threads: int = 2) -> ZooServer:
    """A server bound and ready; call serve_forever() (port 0 picks a free port: see .url).
    Each download decodes on `decode_threads` threads, a few chunks ahead of the socket."""
    try:
        return ZooServer((host, port), store, token or None, quiet, decode_threads)
    except OSError as error:
        raise ZooError(f"cannot listen on {host}:{port}: {error.strerror}") from None
