"""`zoo serve`: the part of the Hugging Face Hub API that huggingface_hub and transformers use,
answered from the zoo, with every file decoded as it streams.

Routes (repo ids are `name` or `org/name`; revisions are URL-quoted whole)::

    GET       /api/models/{repo}[/revision/{rev}]      model info: sha (40 hex), siblings
    GET       /api/models/{repo}/tree/{rev}[/{path}]   path, size, oid, lfs
    HEAD|GET  /{repo}/resolve/{commit}/{file}          the decoded file; Range; If-Range; X-Repo-Commit; ETag
    HEAD|GET  /{repo}/resolve/{rev}/{file}             307 to the file at the commit {rev} names now

A revision is a branch name, a stored entry's commit, or `REVISION:VARIANT`. Nothing in this
module ever opens a path taken from a request: files are looked up by name in the catalogue
and read out of the archive it names.

The app is plain ASGI on uvicorn (httptools, which parses HTTP with llhttp, on uvloop), with two
limits uvicorn lacks there: a request's head may be at most MAX_HEADER_BYTES and must arrive within
HEAD_TIMEOUT (`GuardedHttpProtocol`), and each connection keeps at most UNSENT_BYTES unsent in
the kernel (`limit_unsent`). Catalogue look-ups run on worker threads, or not at all for a file
request the catalogue answered before and has not changed since (`answer_from_memory`); archives are
read through maps of their files. A download decodes on a thread of its own, a chunk ahead of the
socket while the server's shared read-ahead lasts (`DecodeThread`), and `send` waits while the
client is slow, so a stalled client holds two decoded batches. Downloads of the same file at the
same time decode each piece once (`SharedPieces`).
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import hmac
import ipaddress
import json
import re
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path, PureWindowsPath
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, quote, unquote

from zoo.container import format as archive_format
from zoo.container.reader import Archive
from zoo.errors import ZooError
from zoo.hub.manifest import DEFAULT_REVISION, bit_exact, parse_ref, readable
from zoo.hub.store import NAME_PATTERN, Entry, Store, StoredFile
from zoo.allocator import keep_freed_buffers

try:
    import fcntl
    from termios import TIOCOUTQ
except ImportError:  # not Unix: the stall watchdog sees the transport's buffer only
    TIOCOUTQ = None

READ_AHEAD_CHUNKS = 32  # decoded chunks the server holds beyond one per download, all downloads together
SHARED_PIECES_BYTES = 128 << 20  # decoded pieces kept for other downloads of the same file in progress, all together
SEND_SLICE = 4 << 20  # bytes per ASGI send (a whole chunk at the default size); the transport holds a view, not a copy
UNSENT_BYTES = 128 << 10  # TCP_NOTSENT_LOWAT: a response's bytes the kernel holds before the client's window opens
GATHER_BYTES = 64 << 10  # decoded pieces smaller than this (a model's biases and norms) go out together
STALL_TIMEOUT = 120.0  # seconds a client may take nothing it was sent before its connection is cut
MAX_HEADER_BYTES = 16 << 10  # a request line and headers larger than this are refused (400)
HEAD_TIMEOUT = 30.0  # seconds a request line and headers may take to arrive, from the connection or their first byte
MAX_CONNECTIONS = 1000  # requests beyond this many open connections or tasks get 503
IDLE_TRIM_SECONDS = 1.0  # with no download for this long, freed memory goes back to the system
_LISTS = ("if-match", "if-none-match")  # request headers whose lines join into one list
_RANGE_SPEC = re.compile(r"(\d*)[ \t]*-[ \t]*(\d*)")
# Archives held open between requests: at most 64, and never more than an eighth of the process's
# descriptors (ulimit -n), which the downloads and the object files they read need too: under
# `ulimit -n 64` the cache took them all after 48 models, and every request after was a 500.
_OPEN_ARCHIVES = archive_format.open_files_share(64, 4)


class _Uncached(Exception):
    """An answer on the loop's thread needs what only a worker may do: ask the catalogue, open an archive."""


def _unreachable(error: BaseException) -> bool:
    """Whether an error is a zoo's storage out of reach (its bucket), not damage."""
    from zoo.hub.remote import StorageError

    return isinstance(error, StorageError)


class HubError(Exception):
    """An answer other than 200, with the X-Error-Code huggingface_hub maps to its exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


@dataclass
class Answer:
    """What a request gets: a status, headers and either a body or a slice of a stored file."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    archive: Archive | None = None
    stored: StoredFile | None = None
    start: int = 0
    end: int = 0
    close: bool = False
    note: str = field(default="")  # for the log only


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def printable(text: str) -> str:
    """`text` with every control or non-ASCII character written as an escape, for logs."""
    return "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in text)


def _segments(raw_path: str) -> list[str]:
    """Path segments, decoded once as HTTP encodes them; refuses anything that could climb out of
    a folder. Decoded once only: the server opens no path a request names (a file is looked up by
    its name in the archive), and a file named `x%5Cy.txt` or `%2e%2e`, which huggingface_hub asks
    for as `x%255Cy.txt`, was listed and then refused as an escape."""
    segments = [unquote(part) for part in raw_path.split("/")[1:]]
    for segment in segments:
        if "\\" in segment or "\x00" in segment or any(part in (".", "..") for part in segment.split("/")):
            raise HubError(400, "path escapes its repository")
    return segments


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true")


def _position(digits: str, size: int) -> int:
    """A decimal position, capped at `size`: a 5000-digit number is simply past the end."""
    digits = digits.lstrip("0") or "0"
    return size if len(digits) > len(str(size)) else min(int(digits), size)


def _magnitude(digits: str) -> tuple[int, str]:
    """Orders decimal numbers of any length without int() (which refuses over 4300 digits)."""
    digits = digits.lstrip("0")
    return len(digits), digits


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One byte range as [start, end) within `size`, or None to send the whole file (a unit
    other than bytes, or several ranges: RFC 9110 lets a server ignore those). A malformed byte
    range is refused with 400, an unsatisfiable one with 416."""
    unit, _, ranges = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in ranges:
        return None
    match = _RANGE_SPEC.fullmatch(ranges.strip())
    if not match or match.group(1) == match.group(2) == "":
        raise HubError(400, f"malformed Range header {printable(header[:80])!r}: zoo serves one range, bytes=START-END")
    first, last = match.groups()
    unsatisfiable = {"Content-Range": f"bytes */{size}"}
    if first == "":
        length = _position(last, size)
        if length == 0:
            raise HubError(416, "empty suffix range", headers=unsatisfiable)
        return size - length, size
    start = _position(first, size)
    if last != "" and _magnitude(last) < _magnitude(first):
        raise HubError(400, f"malformed Range header {printable(header[:80])!r}: end before start")
    if start >= size:
        raise HubError(416, f"range starts past the end of the file ({size} bytes)", headers=unsatisfiable)
    return start, size if last == "" else min(_position(last, size) + 1, size)


def _framing_problem(scope: dict[str, Any]) -> str | None:
    """What makes a request ambiguous to frame (llhttp already refuses conflicting or malformed
    Content-Length and unknown transfer codings): a GET or HEAD that carries a body, or two Hosts."""
    names = [name for name, _ in scope["headers"]]
    # the request line counts too: a head read in one block is past the protocol's own count
    line = len(scope["method"]) + len(scope["raw_path"]) + len(scope["query_string"]) + 12
    if line + sum(len(name) + len(value) + 4 for name, value in scope["headers"]) > MAX_HEADER_BYTES:
        return "request line and headers too large"
    if names.count(b"host") > 1:
        return "more than one Host header"
    if scope["method"] in ("GET", "HEAD"):
        if b"transfer-encoding" in names:
            return f"a {scope['method']} request carries no body (Transfer-Encoding given)"
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.strip() != b"0":
            return f"a {scope['method']} request carries no body (Content-Length given)"
    return None


# The Hub's routes under /api/models/REPO that zoo serve has not (huggingface_hub's list_repo_refs,
# auth_check, list_repo_commits, discussions, paths-info, upload steps, settings): under a stored
# one-segment model NAME, NAME/ROUTE is no such route, not a model NAME/ROUTE that is missing.
_HUB_MODEL_ROUTES = frozenset({"refs", "auth-check", "commits", "commit", "discussions", "paths-info", "preupload", "settings",
                               "xet-read-token", "xet-write-token", "super-squash", "branch", "tag", "compare", "scan", "treesize",
                               "notebook", "lfs-files", "access-requests", "user-access-request"})


class ZooApp:
    """The ASGI application: routes, catalogue look-ups and decoded downloads."""

    def __init__(self, store: Store, token: str | None = None, quiet: bool = False, decode_threads: int = 1,
                 stall_timeout: float = STALL_TIMEOUT, shared_bytes: int = SHARED_PIECES_BYTES, root_path: str = "") -> None:
        self.store, self.token, self.quiet = store, token, quiet
        self.root_path = root_path  # what a proxy in front strips from each path: the redirects put it back
        self.decode_threads, self.stall_timeout = decode_threads, stall_timeout
        self._archives: dict[Path, Archive] = {}
        self._archives_lock = threading.Lock()
        self._stamp_seen: Any = None  # the catalogue's index_stamp when replaced files were last let go of
        # What the catalogue answered, by (ref, with_files), with the index_stamp it was read at.
        self._found: dict[tuple[str, bool], tuple[tuple[Any, ...], list[Entry]]] = {}
        self._entries: dict[tuple[str, str, float, bool], Entry] = {}  # what _found's lists hold, each once
        self._unlisted_noted: set[tuple[str, str]] = set()  # models whose unlisted files the log has named
        self._on_loop = threading.local()  # .active: answering on the loop's thread, from memory only
        self._read_ahead = threading.Semaphore(READ_AHEAD_CHUNKS)
        self._shared = SharedPieces(shared_bytes)
        self._streaming = 0  # downloads in progress (on the loop's thread only)
        self._trim_timer: asyncio.TimerHandle | None = None
        self._trim = keep_freed_buffers()  # malloc_trim, called once the downloads stop

    def log(self, message: str) -> None:
        sys.stderr.write(printable(message) + "\n")

    def archive(self, entry: Entry) -> Archive:
        """Archives stay open between requests; the header is parsed once. An archive dropped
        from this cache is never closed here: a stream still reading it closes it when done."""
        with self._archives_lock:
            opened = self._archives.get(entry.archive)
            if opened is None and getattr(self._on_loop, "active", False):
                raise _Uncached
            if opened is None:
                if len(self._archives) >= _OPEN_ARCHIVES:
                    self._archives.clear()
                try:
                    opened = Archive(entry.archive, mapped=True)
                except OSError as error:
                    if error.errno not in archive_format.OUT_OF_DESCRIPTORS or not self._archives:
                        raise
                    self._archives.clear()  # let the idle ones go (a stream reading one keeps it), then once more
                    gc.collect()
                    opened = Archive(entry.archive, mapped=True)
                self._archives[entry.archive] = opened
            return opened

    def _let_go_of_replaced(self) -> None:
        """The catalogue changed: the archives and objects held open whose files were removed or
        replaced since (zoo rm, compress --force, gc) are let go, so their disk space comes back
        while the server runs. A download still reading one keeps it until it ends."""
        with self._archives_lock:
            for path in [path for path, opened in self._archives.items() if opened.replaced()]:
                del self._archives[path]
        archive_format.let_go_of_replaced_objects()

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        target = scope["raw_path"].decode("latin-1") + (f"?{scope['query_string'].decode('latin-1')}" if scope["query_string"] else "")
        problem = _framing_problem(scope)
        if problem:
            answer = self._error_answer(HubError(400, problem))
            answer.close = True
        elif scope["method"] not in ("GET", "HEAD"):
            answer = self._error_answer(HubError(405, f"method {scope['method']} is not allowed", headers={"Allow": "GET, HEAD"}))
        else:
            headers: dict[str, str] = {}
            for name, value in scope["headers"]:  # a list sent over several lines is one list (If-Match)
                key, text = name.decode("latin-1"), value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in _LISTS and key in headers else text
            answer = self.answer_from_memory(target, headers, scope["method"] == "HEAD")
            if answer is None:
                answer = await asyncio.get_running_loop().run_in_executor(None, self.answer, target, headers, scope["method"] == "HEAD")
        sent = await self._send(answer, scope, receive, send)
        if not self.quiet:
            client = scope.get("client") or ("-", 0)
            self.log(f'{client[0]} - "{scope["method"]} {target} HTTP/{scope["http_version"]}" {answer.status} {sent}{answer.note}')

    async def _send(self, answer: Answer, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> int:
        """Sends the answer; the bytes of body sent."""
        if answer.stored is None or scope["method"] == "HEAD" or answer.start == answer.end:
            await send({"type": "http.response.start", "status": answer.status, "headers": _header_list(answer)})
            await send({"type": "http.response.body", "body": answer.body})
            return 0 if scope["method"] == "HEAD" else len(answer.body)  # uvicorn writes no body for HEAD
        stream = DecodeThread(asyncio.get_running_loop(), lambda: self._shared.pieces(  # type: ignore[union-attr]
            answer.archive, answer.stored.path, answer.start, answer.end, answer.stored.size, self.decode_threads),  # type: ignore[union-attr, arg-type]
            self._read_ahead)
        self._streaming += 1
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        progress = [time.monotonic()]  # when a send last returned: a watchdog, not a timeout per send, is cheap
        watchdog = asyncio.ensure_future(self._watchdog(send, progress))
        sent = 0
        try:
            try:
                batch = await stream.next()  # before any header: a chunk that fails here is a clean 500
            except Exception as error:  # noqa: BLE001 - a damaged archive or a bug: either fails this request only
                failed = self._error_answer(HubError(503 if _unreachable(error) else 500,
                                                     self._decoding_failed(error, answer.stored.path)))  # type: ignore[union-attr]
                answer.status, answer.note = failed.status, " (decoding failed)"
                await send({"type": "http.response.start", "status": failed.status, "headers": _header_list(failed)})
                await send({"type": "http.response.body", "body": failed.body})
                return 0
            await send({"type": "http.response.start", "status": answer.status, "headers": _header_list(answer)})
            while True:
                for piece in batch:
                    if piece is None:
                        await send({"type": "http.response.body", "body": b""})
                        return sent
                    for offset in range(0, len(piece), SEND_SLICE):
                        body = piece[offset:offset + SEND_SLICE]
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                        progress[0] = time.monotonic()
                        if watcher.done():
                            answer.note = (f" (client read nothing for {self.stall_timeout:g} s: connection cut)"
                                           if watchdog.done() else " (client went away)")
                            return sent
                        sent += len(body)
                # uvicorn's send returns once its body is in the transport, and waits for room
                # before the next one: an empty send returns when the batch has gone to the kernel,
                # and only then is its slot given back, so a stalled client holds this batch and
                # the one decoded after it, not a third.
                await send({"type": "http.response.body", "body": b"", "more_body": True})
                stream.release()
                try:
                    batch = await stream.next()
                except Exception as error:  # noqa: BLE001 - as above
                    # Too late for a status. Closing short of Content-Length is what every client
                    # reads as a failed download; the damaged chunk's bytes are never sent.
                    self._decoding_failed(error, answer.stored.path)  # type: ignore[union-attr]
                    answer.note = f" (cut after {sent} of {answer.end - answer.start} bytes: decoding failed)"
                    await _cut(send, watcher)
                    return sent
        finally:
            stream.stop()
            watcher.cancel()
            watchdog.cancel()
            self._streaming -= 1
            if not self._streaming and self._trim is not None:
                if self._trim_timer is not None:
                    self._trim_timer.cancel()
                self._trim_timer = asyncio.get_running_loop().call_later(IDLE_TRIM_SECONDS, self._trim_when_idle)

    def _trim_when_idle(self) -> None:
        self._trim_timer = None
        if not self._streaming and self._trim is not None:
            asyncio.get_running_loop().run_in_executor(None, self._trim)

    def _decoding_failed(self, error: Exception, path: str) -> str:
        """Logs a failed decode in full; what the client may read of it (no server paths)."""
        if _unreachable(error):  # nothing is damaged: the bucket did not answer
            self.log(f"error: {error}")
            return f"the stored file {path!r} cannot be read now: the zoo's storage cannot be reached; the server's log has the details"
        if isinstance(error, ZooError):
            self.log(f"error: {error}")
            return f"the stored file {path!r} cannot be decoded: the archive is damaged; the server's log has the details"
        self.log(f"internal error decoding {path!r}: {error!r}")
        return f"internal error: {type(error).__name__}"

    async def _watchdog(self, send: Callable[..., Any], progress: list[float]) -> None:
        """Cuts a connection whose client has taken nothing for `stall_timeout` seconds: no send
        has returned, and what the connection has yet to deliver has not shrunk. A slow client
        still draining one send is not cut."""
        transport = _transport(send)
        queued = None
        while True:
            await asyncio.sleep(self.stall_timeout / 4)
            if transport is not None:
                size = _undelivered(transport)
                if queued is not None and size < queued:
                    progress[0] = max(progress[0], time.monotonic())
                queued = size
            if time.monotonic() - progress[0] > self.stall_timeout:
                if transport is not None:
                    transport.abort()
                return

    # -- routing (on a worker thread, or from memory on the loop's) ----------------------------

    def answer_from_memory(self, target: str, headers: dict[str, str], head: bool) -> Answer | None:
        """The answer, on the loop's thread, when every catalogue look-up it needs was made before
        and the catalogue has not changed since (a few system calls to tell), and its archive is
        open; else None: `answer` on a worker thread, where the catalogue may keep it waiting.
        A download saves the trip to a worker and back and the catalogue's queries: about a
        millisecond before its first byte, cold caches included. Only file requests: the API's
        answers grow with a model's files, and are made on a worker."""
        if "/resolve/" not in target:
            return None
        self._on_loop.active = True
        try:
            return self.answer(target, headers, head)
        except _Uncached:
            return None
        finally:
            self._on_loop.active = False

    def _matches(self, ref: str, with_files: bool = False) -> list[Entry]:
        """Store.matches, remembered while the catalogue's index_stamp stays the same."""
        stamp = self.store.index_stamp()
        known = self._found.get((ref, with_files)) if stamp is not None else None
        if known is not None and known[0] == stamp:
            return known[1]
        if getattr(self._on_loop, "active", False):
            raise _Uncached
        if stamp is None or stamp != self._stamp_seen:
            self._stamp_seen = stamp
            self._let_go_of_replaced()
            self._found.clear()
            self._entries.clear()
        found = self.store.matches(ref, with_files)
        if stamp is not None and self.store.index_stamp() == stamp:  # nothing was written meanwhile
            if len(self._found) >= 4096:
                self._found.clear()
                self._entries.clear()
            # Many spellings name one model (`main`, `main:lossless`, `main: lossless`, its commit):
            # each is remembered, the entry and its list of files once.
            found = [self._entries.setdefault((e.ref, str(e.archive), e.created, with_files), e) for e in found]
            self._found[(ref, with_files)] = (stamp, found)
        return found

    def answer(self, target: str, headers: dict[str, str], head: bool) -> Answer:
        try:
            self._check_token(headers.get("authorization", ""))
            path, _, query = target.partition("?")
            segments = _segments(path)
            if segments[:2] == ["api", "models"] and len(segments) > 2 and not self._of_api_models(segments):
                return self._api(segments[2:], parse_qs(query))
            if "resolve" in segments[1:3]:
                return self._resolve(segments, headers, head)
            raise HubError(404, "no such route")
        except _Uncached:
            raise
        except HubError as error:
            return self._error_answer(error)
        except ZooError as error:
            # A damaged archive or catalogue, or the bucket of a zoo on object storage out of reach:
            # this request fails, the server goes on. The message names files on the server's disk
            # or its bucket: it goes to the log, not to the client.
            self.log(f"error on {target}: {error}")
            if _unreachable(error):  # nothing is damaged: the storage did not answer, try again later
                return self._error_answer(HubError(503, "the zoo's storage cannot be reached now; the server's log has the details"))
            return self._error_answer(HubError(500, "the zoo cannot read this model: its archive or the catalogue "
                                                    "is damaged or unreadable; the server's log has the details"))
        except Exception as error:  # noqa: BLE001 - one request's bug must not reach the others
            self.log(f"internal error on {target}: {error!r}")
            return self._error_answer(HubError(500, f"internal error: {type(error).__name__}"))

    def _of_api_models(self, segments: list[str]) -> bool:
        """Whether /api/models/resolve/REV/FILE is a file of a model named api/models, which the
        names allow, rather than the API's route: so when that model is here (a model named
        `resolve` or `resolve/REV` beside it would lose its API's answers for such a revision)."""
        return len(segments) > 4 and segments[2] == "resolve" and bool(self._matches("api/models"))

    def _check_token(self, given: str) -> None:
        if self.token is None:
            return
        scheme, _, credentials = given.strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self.token.encode()):
            raise HubError(401, "this zoo needs a bearer token (set HF_TOKEN)", headers={"WWW-Authenticate": 'Bearer realm="zoo"'})

    def _entry(self, repo: str, revision: str, known: bool = False) -> Entry:
        """`known`: _split_repo has found the repository already (one catalogue query fewer)."""
        if not known and (not NAME_PATTERN.fullmatch(repo) or not self._matches(repo)):
            raise HubError(404, f"repository {repo!r} is not in this zoo", "RepoNotFound")
        if revision == DEFAULT_REVISION and not any(e.revision == DEFAULT_REVISION for e in self._matches(repo)):
            # huggingface_hub asks for `main` when its caller names no revision: a model stored
            # under other revisions only answers from the branch the API calls its default
            return self._default_entry(repo)
        found = self._readable(f"{repo}@{revision}")
        if not found:
            raise HubError(404, f"revision {revision!r} of {repo!r} is not in this zoo{self._only_lossy(repo, revision)}", "RevisionNotFound")
        return found[0]

    def _readable(self, ref: str) -> list[Entry]:
        """Store.readable, from _matches's memory: a bare revision is the lossless variant, never a
        lossy one in its place (a script asking for `main` would get quantized weights)."""
        name = parse_ref(ref)[0]
        return readable(self._matches(ref, with_files=True), ref, any(e.revision == DEFAULT_REVISION for e in self._matches(name)))

    def _only_lossy(self, repo: str, revision: str) -> str:
        lossy = [e for e in self._matches(f"{repo}@{revision}") if not bit_exact(e)]
        return f"; it holds only lossy variants there: ask for revision '{lossy[0].revision}:{lossy[0].variant}'" if lossy else ""

    def _default_entry(self, repo: str) -> Entry:
        """What the Hub answers for a repo without a revision, its default branch: `main`, or for a
        model stored under other revisions only, the one the catalogue ranks first (else
        huggingface_hub's repo_exists raises RevisionNotFoundError for a model that is here)."""
        if not NAME_PATTERN.fullmatch(repo) or not self._matches(repo):
            raise HubError(404, f"repository {repo!r} is not in this zoo", "RepoNotFound")
        found = self._readable(repo)
        if not found:
            # main holds it only lossy (another revision's lossless one is not main), or, the model
            # having no main, every revision does
            at_main = [e for e in self._matches(f"{repo}@{DEFAULT_REVISION}") if not bit_exact(e)]
            lossy = at_main or [e for e in self._matches(repo) if not bit_exact(e)]
            held = "main only as lossy variants" if at_main else "only lossy variants"
            raise HubError(404, f"{repo!r} holds {held}: ask for revision '{lossy[0].revision}:{lossy[0].variant}'", "RevisionNotFound")
        return found[0]

    def _split_repo(self, segments: list[str], keywords: tuple[str, ...]) -> tuple[str, str, list[str]]:
        """(repo, keyword, rest) for a repo id of one or two segments; the reading whose repo
        is in the zoo wins (a repo may be called 'tree'). With a keyword, the repo is in the zoo."""
        # a keyword with nothing after it is no route: `x/tree` is a repo of that name, zoo holding x or not
        readings = [(n, segments[n]) for n in (2, 1) if len(segments) > n + 1 and segments[n] in keywords]
        for length, keyword in readings:
            repo = "/".join(segments[:length])
            if NAME_PATTERN.fullmatch(repo) and self._matches(repo):
                return repo, keyword, segments[length + 1:]
        if readings:
            raise HubError(404, f"repository {'/'.join(segments[:readings[0][0]])!r} is not in this zoo", "RepoNotFound")
        if len(segments) <= 2:
            repo = "/".join(segments)
            if len(segments) == 2 and segments[1] in _HUB_MODEL_ROUTES and not (NAME_PATTERN.fullmatch(repo) and self._matches(repo)) \
                    and NAME_PATTERN.fullmatch(segments[0]) and self._matches(segments[0]):
                # `tiny/refs`, `tiny/auth-check`: a route of the model `tiny` this server lacks, not
                # a missing model (RepoNotFound made huggingface_hub say `tiny` was not there). Only
                # the Hub's own routes: `tiny/other` is a model that is not here (repo_exists says
                # False, where a bare 404 raised).
                raise HubError(404, f"no such route: zoo serves the model info, tree and files of {segments[0]!r}, not {segments[1]!r}")
            return repo, "", []
        raise HubError(404, "no such route")

    def _api(self, segments: list[str], query: dict[str, list[str]]) -> Answer:
        repo, keyword, rest = self._split_repo(segments, ("revision", "tree"))
        if keyword == "":
            document: Any = self._model_info(self._default_entry(repo), _flag(query, "blobs"))
        elif keyword == "revision" and len(rest) == 1:
            document = self._model_info(self._entry(repo, rest[0], known=True), _flag(query, "blobs"))
        elif keyword == "tree" and rest:
            document = self._tree(self._entry(repo, rest[0], known=True), "/".join(rest[1:]), _flag(query, "recursive"))
        else:
            raise HubError(404, "no such route")
        return Answer(200, {"Content-Type": "application/json"}, json.dumps(document).encode())

    def _links(self, entry: Entry) -> dict[str, StoredFile]:
        """The model's links that lead, through its own links, to one of its files, and its hard
        links (a file's other names, stored once): by the link's name, that file. The Hub has no
        links; a client asks for the link's name and gets the file's bytes, as a checkout of the
        folder would read them."""
        archive = self.archive(entry)
        targets, hard_links = archive.link_targets(), archive.hard_links()
        if not targets and not hard_links:
            return {}
        files = {f.path: f for f in entry.files}
        # a link to a hard link leads to the file it names
        targets = {name: hard_links.get(target, target) for name, target in targets.items() if target is not None}
        return {name: files[target] for name, target in {**targets, **hard_links}.items() if target in files}

    def _listed(self, entry: Entry) -> list[StoredFile]:
        """The files a client sees: the model's own, and its links to them under their own names,
        less those huggingface_hub refuses to write (`_drive_like`): listed, they failed the whole
        snapshot_download. They stay in the zoo (a valid POSIX name; `zoo export` gives them back),
        as links the Hub cannot hold stay unlisted; the log says which were left out, once."""
        linked = [replace(f, path=name) for name, f in self._links(entry).items()]
        files = sorted([*entry.files, *linked], key=lambda f: f.path) if linked else entry.files
        unlisted = [f.path for f in files if _drive_like(f.path)]
        if unlisted:
            if (entry.ref, entry.commit) not in self._unlisted_noted:
                self._unlisted_noted.add((entry.ref, entry.commit))
                self.log(f"note: {entry.ref}: not listed, as huggingface_hub refuses such names (a Windows drive): {', '.join(map(repr, unlisted))}")
            files = [f for f in files if not _drive_like(f.path)]
        return files

    def _model_info(self, entry: Entry, blobs: bool) -> dict[str, Any]:
        siblings = []
        for f in self._listed(entry):
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
        listed = self._listed(entry)
        if folder and not any(f.path.startswith(prefix) for f in listed):
            raise HubError(404, f"{folder!r} is not a folder of {entry.name!r}", "EntryNotFound")
        items: list[dict[str, Any]] = []
        folders_seen: set[str] = set()
        for f in listed:
            if not f.path.startswith(prefix):
                continue
            inner = f.path[len(prefix):]
            # each folder as the Hub lists it, before what it holds: recursively, every folder on the way
            parts = inner.split("/")[:-1] if recursive else inner.split("/")[:1] if "/" in inner else []
            for depth in range(1, len(parts) + 1):
                sub = prefix + "/".join(parts[:depth])
                if sub not in folders_seen:
                    folders_seen.add(sub)
                    items.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": sub})
            if not recursive and "/" in inner:
                continue
            item: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path}
            if f.lfs:
                item["lfs"] = {"oid": f.served_sha256, "size": f.size, "pointerSize": f.pointer_size}
            items.append(item)
        return items

    def _resolve(self, segments: list[str], headers: dict[str, str], head: bool) -> Answer:
        repo, _, rest = self._split_repo(segments, ("resolve",))
        if len(rest) < 2:
            raise HubError(404, "a resolve URL needs a revision and a file name")
        entry = self._entry(repo, rest[0], known=True)
        path = "/".join(rest[1:])
        stored = next((f for f in entry.files if f.path == path), None) or self._links(entry).get(path)
        if stored is None:
            raise HubError(404, f"{path!r} is not a file of {entry.name!r}", "EntryNotFound", {"X-Repo-Commit": entry.commit})
        etag = f'"{stored.served_sha256}"'
        if rest[0] != entry.commit:
            # A branch or variant names whatever is stored there now: the bytes come from the
            # commit's URL, as on the Hub, so that a client resuming a cut download asks for the
            # version it began (huggingface_hub resumes with a bare Range on the URL it downloads
            # from), and gets a 404 once that version is gone, never the next one's bytes after its
            # own. Relative, so that it holds behind a proxy, with the prefix a proxy strips put
            # back (`--root-path`); huggingface_hub follows a path, not a `../` reference.
            location = f"{self.root_path}/{quote(repo)}/resolve/{entry.commit}/{quote(path)}"
            return Answer(307, {"Location": location, "X-Repo-Commit": entry.commit, "ETag": etag,
                                "X-Linked-Etag": etag, "X-Linked-Size": str(stored.size)})
        archive = self.archive(entry)  # opened before any header goes out: a bad archive is a clean 500
        # Preconditions (RFC 9110 13.2.2), before any range: a client resuming with If-Match gets
        # 412 for a file stored anew since, never the new bytes after its old ones.
        if "if-match" in headers and not _names_etag(headers["if-match"], etag, weak=False):
            raise HubError(412, f"{path!r} of {entry.name!r} is no longer the version If-Match names (stored anew?)",
                           headers={"ETag": etag, "X-Repo-Commit": entry.commit})
        if "if-none-match" in headers and _names_etag(headers["if-none-match"], etag, weak=True):
            return Answer(304, {"X-Repo-Commit": entry.commit, "ETag": etag})
        answer = Answer(200, {"X-Repo-Commit": entry.commit, "ETag": etag, "Accept-Ranges": "bytes",
                              "Content-Type": "application/octet-stream"},
                        archive=archive, stored=stored, start=0, end=stored.size)
        # If-Range: the range holds only for the representation the client already has.
        wanted = headers.get("range") if headers.get("if-range", etag).strip() == etag else None
        selected = parse_range(wanted, stored.size) if wanted and not head else None
        if selected is not None:
            answer.status, (answer.start, answer.end) = 206, selected
            answer.headers["Content-Range"] = f"bytes {answer.start}-{answer.end - 1}/{stored.size}"
        answer.headers["Content-Length"] = str(answer.end - answer.start)
        return answer

    def _error_answer(self, error: HubError) -> Answer:
        headers = {"Content-Type": "application/json"}
        if error.code:
            headers["X-Error-Code"] = error.code
        # A header carries latin-1 on one line: anything else in the message becomes '?'.
        headers["X-Error-Message"] = re.sub(r"[^\x20-\x7e]", "?", str(error))
        headers.update(error.headers)
        return Answer(error.status, headers, json.dumps({"error": str(error)}).encode())


def _drive_like(path: str) -> bool:
    """Whether a part of `path` reads as anchored on Windows (`a:b.txt`, a drive), which
    huggingface_hub refuses to write on every system (its _validate_relative_filename, by the same
    test), as a path that could land outside its folder on Windows."""
    return any(PureWindowsPath(part).drive or PureWindowsPath(part).root for part in path.split("/"))


def _names_etag(header: str, etag: str, weak: bool) -> bool:
    """Whether an If-Match (strong comparison: a weak tag names nothing) or If-None-Match (weak
    comparison) list names the ETag; `*` names any version (RFC 9110 13.1.1, 13.1.2)."""
    tags = [tag.strip() for tag in header.split(",")]
    if "*" in tags:
        return True
    return etag in ([tag.removeprefix("W/") for tag in tags] if weak else tags)


def _header_list(answer: Answer) -> list[tuple[bytes, bytes]]:
    headers = [(b"server", b"zoo")] + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()]
    if "Content-Length" not in answer.headers and answer.status != 304:  # a 304 has no body, nor a length other than the file's
        headers.append((b"content-length", str(len(answer.body)).encode()))
    if answer.close:
        headers.append((b"connection", b"close"))
    return headers


async def _wait_for_disconnect(receive: Callable[..., Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _transport(send: Callable[..., Any]) -> asyncio.Transport | None:
    """The connection's transport: uvicorn's `send` is a bound method of an object holding it."""
    return getattr(getattr(send, "__self__", None), "transport", None)


def _undelivered(transport: asyncio.Transport) -> int:
    """Bytes written to a connection that its client has not acknowledged: in the transport, and
    in the kernel's send queue (SIOCOUTQ, where there is one)."""
    size = transport.get_write_buffer_size()
    connection = transport.get_extra_info("socket")
    if connection is not None and TIOCOUTQ is not None:
        with suppress(OSError, ValueError):
            size += struct.unpack("i", fcntl.ioctl(connection.fileno(), TIOCOUTQ, b"\0" * 4))[0]
    return size


async def _cut(send: Callable[..., Any], disconnected: asyncio.Future[None]) -> None:
    """Ends the connection short of its Content-Length, once what was sent has gone out. ASGI has
    no message for this; uvicorn closes the connection when an app returns mid-body, but with a
    misleading error in the log."""
    transport = _transport(send)
    if transport is not None:
        transport.close()
        await asyncio.wait([disconnected], timeout=5)


class SharedPieces:
    """Decoded pieces that downloads of the same file in progress at the same time share: the
    first download to need a piece decodes it, one that needs it meanwhile waits for it, and one
    behind takes it from here. Eight clients fetching one file (eight ranks loading one checkpoint)
    decode it once. A piece is kept only while a download of its file still has it ahead, and the
    oldest go first beyond `budget` bytes (a download left that far behind decodes its own):
    nothing is cached between downloads, and a lone download keeps nothing."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._changed = threading.Condition()
        self._pieces: OrderedDict[tuple[int, str, int], bytes | memoryview] = OrderedDict()  # oldest first
        self._kept: dict[tuple[int, str], list[int]] = {}  # a heap of each file's kept positions (some gone)
        self._decoding: set[tuple[int, str, int]] = set()
        self._downloads: dict[tuple[int, str], dict[int, int]] = {}  # per file: download -> the position it needs
        self._bytes = 0

    def pieces(self, archive: Archive, path: str, start: int, end: int, size: int, threads: int = 1) -> Iterator[bytes | memoryview]:
        """The bytes [start, end) of the file at `path`, in the pieces iter_file would give."""
        # An open archive is kept alive by each download that reads it, so its id names it while
        # any of its pieces are kept.
        file, download = (id(archive), path), object()
        source: Iterator[bytes | memoryview] | None = None  # decodes from `position` on, made when needed
        position = start
        try:
            while position < end:
                key = (*file, position)
                piece = self._claim(key, id(download))
                if piece is None:  # this download decodes it
                    try:
                        if source is None:
                            source = archive.iter_file(path, position, end, threads=threads)
                        piece = next(source, None)
                    except BaseException:
                        self._publish(key, id(download), None)
                        raise
                    if piece is None:
                        self._publish(key, id(download), None)
                        return
                    # A piece cut short by this request's end may not be the whole piece another needs.
                    whole = position + len(piece) < end or end == size
                    self._publish(key, id(download), piece if whole else None)
                else:
                    if source is not None:  # it stands at the piece just taken from here
                        source.close()  # type: ignore[attr-defined]
                        source = None
                    if len(piece) > end - position:
                        piece = memoryview(piece)[:end - position]
                yield piece
                position += len(piece)
        finally:
            if source is not None:
                source.close()  # type: ignore[attr-defined]
            with self._changed:
                downloads = self._downloads.get(file, {})
                downloads.pop(id(download), None)
                if not downloads:
                    self._downloads.pop(file, None)
                self._drop_passed(file)

    def _claim(self, key: tuple[int, str, int], download: int) -> bytes | memoryview | None:
        """The piece at `key` if it is here or being decoded (waits for it); None: decode it."""
        with self._changed:
            self._downloads.setdefault(key[:2], {})[download] = key[2]  # type: ignore[index]
            self._drop_passed(key[:2])  # type: ignore[arg-type]
            while True:
                piece = self._pieces.get(key)
                if piece is not None:
                    return piece
                if key not in self._decoding:
                    self._decoding.add(key)
                    return None
                self._changed.wait()

    def _publish(self, key: tuple[int, str, int], download: int, piece: bytes | memoryview | None) -> None:
        """Ends the decode of `key`, keeping the piece if another download still needs it."""
        file, position = key[:2], key[2]
        with self._changed:
            self._decoding.discard(key)
            behind = any(other != download and at <= position for other, at in self._downloads.get(file, {}).items())  # type: ignore[call-overload]
            if piece is not None and behind and len(piece) * 4 <= self.budget:
                self._pieces[key] = piece
                heapq.heappush(self._kept.setdefault(file, []), position)  # type: ignore[arg-type]
                self._bytes += len(piece)
                while self._bytes > self.budget:
                    self._bytes -= len(self._pieces.popitem(last=False)[1])
            self._changed.notify_all()

    def _drop_passed(self, file: tuple[int, str]) -> None:
        """Drops the kept pieces of `file` that every download of it in progress has passed."""
        kept = self._kept.get(file)
        if not kept:
            return
        downloads = self._downloads.get(file)
        lowest = min(downloads.values()) if downloads else None
        while kept and (lowest is None or kept[0] < lowest):
            dropped = self._pieces.pop((*file, heapq.heappop(kept)), None)
            if dropped is not None:
                self._bytes -= len(dropped)
        if not kept:
            del self._kept[file]


class _Token:
    """The slots a decoded piece holds until the sender is done with it."""

    def __init__(self, *slots: threading.Semaphore) -> None:
        self.slots = slots

    def release(self) -> None:
        for slot in self.slots:
            slot.release()


class DecodeThread:
    """The decoded pieces of one download, made on a thread of their own. A piece may be decoded
    while the download's own slot is free (so one piece at a time is always allowed), or with a
    token from `read_ahead`, the server's shared pool: while the client keeps up, the next piece is
    decoded as the current one goes out; a stalled download holds one piece, and the stalled
    together hold at most the shared pool besides. A run of small pieces is handed over with the
    piece after it (`_gather`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pieces: Callable[[], Iterator[bytes | memoryview]],
                 read_ahead: threading.Semaphore) -> None:
        self._loop, self._pieces, self._read_ahead = loop, pieces, read_ahead
        self._ready: asyncio.Queue[Any] = asyncio.Queue()
        self._own = threading.Semaphore(1)
        self._ahead = threading.Semaphore(1)  # one read-ahead piece per download at a time
        self._held: _Token | None = None  # the token of the piece being sent
        self._stopped = False
        threading.Thread(target=self._run, name="zoo-decode", daemon=True).start()

    def _token(self) -> _Token:
        if self._own.acquire(blocking=False):
            return _Token(self._own)
        if self._ahead.acquire(blocking=False):
            if self._read_ahead.acquire(blocking=False):
                return _Token(self._ahead, self._read_ahead)
            self._ahead.release()
        self._own.acquire()
        return _Token(self._own)

    def _run(self) -> None:
        try:
            pieces = self._pieces()
            first = True  # goes out alone: the response's head waits for it (a clean 500 if it fails)
            try:
                while True:
                    token = self._token()
                    if self._stopped:
                        token.release()
                        return
                    try:
                        piece = next(pieces, None)
                    except BaseException:
                        token.release()
                        raise
                    if piece is not None and len(piece) < GATHER_BYTES and not first:
                        batch, error = self._gather(piece, pieces)
                        self._hand_over((batch, token))
                        if error is not None:
                            raise error
                        if batch[-1] is None:
                            return
                        continue
                    self._hand_over(([piece], token))
                    first = False
                    if piece is None:
                        return
            finally:
                pieces.close()  # type: ignore[attr-defined]
        except BaseException as error:  # noqa: BLE001 - handed to the sender, who answers for it
            self._hand_over(error)

    @staticmethod
    def _gather(piece: bytes | memoryview, pieces: Iterator[bytes | memoryview]) -> tuple[list[Any], BaseException | None]:
        """`piece` and the pieces after it, while they are small, as one hand-over: the small ones
        joined into one send (a copy of under GATHER_BYTES), then the piece that ended the run (a
        whole chunk at most, not copied; None at the end of the file). A file of many small tensors
        otherwise costs a hand-over between threads and a send per tensor. The error of a piece
        that fails comes after the pieces before it, as it would one by one."""
        small, total, following, error = [piece], len(piece), None, None
        while True:
            try:
                following = next(pieces, None)
            except Exception as failed:  # noqa: BLE001 - raised by the caller once these are out
                error = failed
                break
            if following is None or len(following) >= GATHER_BYTES or total + len(following) > GATHER_BYTES:
                break
            small.append(following)
            total += len(following)
        batch: list[Any] = [small[0] if len(small) == 1 else b"".join(small)]
        if error is None:
            batch.append(following)
        return batch, error

    def _hand_over(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deliver, item)
        except RuntimeError:  # the loop is closed: the server has stopped
            self._stopped = True
            if isinstance(item, tuple):
                item[1].release()

    def _deliver(self, item: Any) -> None:  # on the loop's thread, as stop() is
        if self._stopped and isinstance(item, tuple):
            item[1].release()
        else:
            self._ready.put_nowait(item)

    async def next(self) -> list[Any]:
        """The next pieces to send, together; the last is None at the end of the file."""
        item = await self._ready.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._held = item
        return batch

    def release(self) -> None:
        """The sender is done with the piece next() gave it."""
        if self._held is not None:
            self._held.release()
            self._held = None

    def stop(self) -> None:
        self._stopped = True
        self.release()
        while not self._ready.empty():
            item = self._ready.get_nowait()
            if isinstance(item, tuple):
                item[1].release()


def _refusal(status: int, reason: str, message: str) -> bytes:
    body = message.encode("ascii")
    return (f"HTTP/1.1 {status} {reason}\r\nserver: zoo\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode("ascii") + body


def limit_unsent(transport: asyncio.Transport) -> None:
    """At most UNSENT_BYTES of a response wait in the kernel for the client's window; the rest
    waits in the transport, and the server's loop writes it when there is room. By default the
    socket takes up to its whole send buffer (grown to megabytes), and on the same machine the
    segments waiting there are sent by the client's own CPU, in the kernel's handling of each
    acknowledgement it sends: a download from 127.0.0.1 cost the client 18 ms of system time
    per 87 MB instead of 4-7, and took 20% longer. The data in flight is not limited: a distant
    client's window still fills."""
    connection = transport.get_extra_info("socket")
    if connection is not None and connection.family in (socket.AF_INET, socket.AF_INET6):
        with suppress(OSError, AttributeError):  # not Linux, or an old kernel: the default then
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, UNSENT_BYTES)


def guarded_protocol() -> type:
    """uvicorn's httptools protocol with the limits it leaves out on a request's head (h11 had the
    first; neither had the second): its size, and the time it may take to arrive. Without them a
    client sending endless header lines grows a buffer, and one trickling a byte every few seconds
    holds a connection (and a slot of MAX_CONNECTIONS) for ever."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, head_timeout: float = HEAD_TIMEOUT, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.head_timeout = head_timeout
            self.head_bytes = 0  # received since the head being read began (an upper bound)
            self.head_pending = False
            self.received = 0  # the size of the block being parsed
            self.head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            limit_unsent(transport)
            self.head_timer = self.loop.call_later(self.head_timeout, self.head_timed_out)  # a silent client too

        def connection_lost(self, exc: Exception | None) -> None:
            self.stop_head_timer()
            super().connection_lost(exc)

        def eof_received(self) -> bool:
            """The client is done sending: a half-close after its request (`nc -N`, socat,
            shutdown(SHUT_WR)) still gets its answer, and the connection closes after it.
            uvicorn's returned None, so asyncio closed the connection at once and the client got
            nothing. A client that is really gone is noticed as before, when the next write meets
            its reset, or by the stall watchdog; with no request in progress, nothing is owed."""
            self.client_done = True
            return not self.answered()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if getattr(self, "client_done", False) and self.answered() and not self.pipeline and not self.transport.is_closing():
                self.transport.close()  # half-closed: no other request can come

        def answered(self) -> bool:
            """Whether no request of this connection is waiting for its answer."""
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            self.received = len(data)
            if self.head_pending:
                self.head_bytes += len(data)
            super().data_received(data)
            if self.head_pending and self.head_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                self.refuse(400, "Bad Request", "request line and headers too large")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            # The head starts somewhere in the block being parsed: count all of it, to be safe.
            self.head_pending, self.head_bytes = True, self.received
            if self.head_timer is None:
                self.head_timer = self.loop.call_later(self.head_timeout, self.head_timed_out)

        def on_headers_complete(self) -> None:
            self.head_pending, self.head_bytes = False, 0
            self.stop_head_timer()
            super().on_headers_complete()

        def stop_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def head_timed_out(self) -> None:
            self.head_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                # A head pipelined behind a response still going out: its clock starts again; the
                # response has the stall watchdog, and an answer now would land inside its body.
                self.head_timer = self.loop.call_later(self.head_timeout, self.head_timed_out)
            elif self.head_pending:
                self.refuse(408, "Request Timeout", f"request line and headers not received within {self.head_timeout:g} s")
            elif self.cycle is None:
                self.transport.close()  # connected and sent nothing: no answer is owed

        def refuse(self, status: int, reason: str, message: str) -> None:
            """Answers and closes; mid-response (an oversized pipelined head), only closes."""
            self.stop_head_timer()
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(_refusal(status, reason, message))
            self.transport.close()

    return GuardedHttpProtocol


def _event_loop() -> str:
    try:
        import uvloop  # noqa: F401 - not on Windows
    except ImportError:
        return "asyncio"
    return "uvloop"


def _server_leaving_ignored_signals(config: Any) -> Any:
    """uvicorn's server, which leaves a signal ignored when it starts ignored: uvicorn put its
    handler in place of SIGINT and SIGTERM whatever they were, and raised again the one that
    stopped it, so that `zoo serve` run as a script's background job (SIGINT ignored, as a shell
    starts it) ended on SIGINT, status 0 and no word. A signal ignored when zoo starts stays
    ignored (zoo.cli.stopping)."""
    import signal

    import uvicorn
    from uvicorn.server import HANDLED_SIGNALS

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            on_main_thread = threading.current_thread() is threading.main_thread()  # elsewhere uvicorn handles none
            ignored = [number for number in HANDLED_SIGNALS if on_main_thread and signal.getsignal(number) == signal.SIG_IGN]
            with super().capture_signals():
                for number in ignored:  # put back when uvicorn puts back what it found
                    signal.signal(number, signal.SIG_IGN)
                yield

    return Server(config)


class ZooServer:
    """`zoo serve`'s server: the app on uvicorn, on a socket bound when this is made."""

    def __init__(self, app: ZooApp, listener: socket.socket, head_timeout: float = HEAD_TIMEOUT) -> None:
        import uvicorn

        self.app, self.socket = app, listener
        config = uvicorn.Config(
            app, http=partial(guarded_protocol(), head_timeout=head_timeout), loop=_event_loop(),  # type: ignore[arg-type]
            interface="asgi3", lifespan="off", log_config=None, access_log=False, log_level="warning", server_header=False,
            limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=30, timeout_graceful_shutdown=2, backlog=2048,
        )
        self._server = _server_leaving_ignored_signals(config)
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    def serve_forever(self) -> None:
        """Serves until shutdown() or, on the main thread, SIGINT/SIGTERM."""
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 10) -> None:
        self._server.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(store: Store, host: str = "127.0.0.1", port: int = 0, token: str | None = None, quiet: bool = False,
                decode_threads: int = 1, stall_timeout: float = STALL_TIMEOUT, head_timeout: float = HEAD_TIMEOUT,
                shared_bytes: int = SHARED_PIECES_BYTES, root_path: str = "") -> ZooServer:
    """A server bound and ready; call serve_forever() (port 0 picks a free port: see .url).
    Each download decodes on its own thread (and `decode_threads` - 1 helpers), a chunk ahead
    of the socket. `root_path`: the path prefix a reverse proxy in front strips (`/zoo` for
    clients whose HF_ENDPOINT is `https://host/zoo`), put back in the redirects."""
    root_path = checked_root_path(root_path)
    if token is not None and not token:  # `--token "$UNSET"`: serving without one would be a surprise
        raise ZooError("the token is empty: give one, or leave it out to serve without a token")
    if token and not all("!" <= c <= "~" for c in token):  # a client sends it in a header: visible ASCII, no spaces
        raise ZooError("the token must be visible ASCII characters without spaces: no client could send this one")
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        listener = socket.socket(family, kind, protocol)
    except (OSError, UnicodeError) as error:
        raise ZooError(f"cannot listen on {host}:{port}: {getattr(error, 'strerror', None) or error}") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError as error:
        listener.close()
        raise ZooError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return ZooServer(ZooApp(store, token, quiet, decode_threads, stall_timeout, shared_bytes, root_path), listener, head_timeout)


def checked_root_path(root_path: str) -> str:
    """`/zoo` from `/zoo` or `/zoo/`; "" for none or `/`. A path as it appears in a URL: it goes
    into the Location header as given."""
    if not root_path or root_path == "/":
        return ""
    if not root_path.startswith("/") or not all("!" <= c <= "~" and c not in "?#" for c in root_path):
        raise ZooError(f"the root path {root_path!r} is not a URL path: give one such as /zoo (visible ASCII, no '?' or '#')")
    return root_path.rstrip("/")
