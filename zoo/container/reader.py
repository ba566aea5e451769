"""Reading an archive: tensors one at a time, files as byte streams, and full verification."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Collection, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo.kernels.parallel import InOrder, for_each, ordered_map
from zoo.codecs.base import TypedArray
from zoo.container.delta import DELTA_DTYPES, check_record, rebuild
from zoo.dtypes import DTYPES, array_fits, storage_dtype, to_float32
from zoo.errors import FormatError, InputError, MissingObjectError, StorageError, ZooError
from zoo.container.format import (INDEX_RECORD, MAX_CHUNK_BYTES, MAX_DIMENSIONS, MAX_XOR_DEPTH, ArchiveFile, current_umask,
                                  let_go_of_replaced_objects)
from zoo.codecs.pipeline import CHUNK_RECORD_BYTES, Pipeline
from zoo.sources.folder import check_relpath

if TYPE_CHECKING:  # base_model opens archives with this module
    from zoo.container.base_model import BaseModel


def xor_dtype(dtype: str) -> str:
    """The unsigned integers of a dtype's width: what a tensor stored as an XOR is coded as."""
    return {8: "U8", 16: "U16", 32: "U32", 64: "U64"}.get(DTYPES[dtype].bits, dtype)


def _fail(archive: ArchiveFile, message: str) -> FormatError:
    return FormatError(f"{archive.path}: {message}")


# A link is followed through the archive's own links as the kernel follows it: through at most
# MAX_LINK_FOLLOWS of them (Linux's MAXSYMLINKS, then ELOOP), to a target of at most
# MAX_LINK_TARGET bytes (what symlink(2) takes, PATH_MAX less its NUL).
MAX_LINK_FOLLOWS = 40
MAX_LINK_TARGET = 4095
# What link(2) says where the file system takes no hard links, or no more for this file: EPERM
# (FAT), EMLINK (a file at its file system's limit of names), EOPNOTSUPP, ENOSYS, EXDEV.
HARD_LINKS_REFUSED = frozenset({errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV})


def _fs_bytes(name: str) -> bytes | None:
    """A name's bytes as archives hold them (UTF-8, a byte that is not UTF-8 as a surrogate escape:
    docs/FORMAT.md), or None where it has none (a lone surrogate). Writing it under a locale of
    another encoding is refused where it is written (api.decompress)."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


class _Node:
    """A folder, file or link of the tree an archive unpacks to (see Archive._check_tree). A link's
    `resolved` is where its target leads, found once: (the last node of the tree on the way, how
    many levels below it the archive holds nothing, how many links were followed to get there)."""

    __slots__ = ("children", "kind", "parent", "resolved", "target")

    def __init__(self, parent: _Node | None, kind: str, target: str | None = None) -> None:
        self.parent, self.kind, self.target = parent, kind, target
        self.children: dict[str, _Node] = {}
        self.resolved: tuple[_Node, int, int] | None = None


def leaf_bytes(leaf: dict[str, Any]) -> int:
    return math.prod(leaf["shape"]) * DTYPES[leaf["dtype"]].bits // 8


def packed_shape(info: dict[str, Any]) -> list[int]:
    """The shape values smaller than a byte (F4) are handed out in: packed two a byte along the
    last axis, as torch's float4_e2m1fn_x2 holds them; with a last axis of odd length, a row of bytes."""
    shape = list(info["shape"])
    return [*shape[:-1], shape[-1] // 2] if shape and shape[-1] % 2 == 0 else [leaf_bytes(info)]


# A file's sha256 runs on one thread (about 1.2 GB/s here, slower than decoding), so the files of a
# sharded model are decoded and hashed side by side, a worker each, when there are at least as
# many files this large as threads; a model of one large file is decoded on every thread instead.
SHARD_BYTES = 16 << 20


def tensor_leaves(root: Any, what: str) -> Iterator[tuple[dict[str, Any], str]]:
    """The leaves under a tensor's root node, each with what to call it in a message (`what`, plus
    the part it stores); a node that is not a dict holds none."""
    if isinstance(root, dict) and "leaf" in root:
        yield root["leaf"], what
    elif isinstance(root, dict):
        for part, child in (root.get("parts") or {}).items():
            yield from tensor_leaves(child, f"{what} part {part!r}")


def sharded(files: list[dict[str, Any]], threads: int) -> list[dict[str, Any]]:
    """The file entries to go side by side (largest first), or none."""
    shards = sorted((entry for entry in files if entry["size"] >= SHARD_BYTES), key=lambda entry: -entry["size"])
    return shards if threads > 1 and len(shards) >= threads else []


class Archive:
    """An open .zoo archive. Tensors and files are decoded on demand; nothing else is read.
    `base` (a zoo.container.base_model.BaseModel) is the model that tensors stored against
    a base are added to; without it, reading one of them raises InputError naming the base."""

    def __init__(self, path: str | os.PathLike[str], base: BaseModel | None = None, owns_base: bool = False,
                 objects_root: str | os.PathLike[str] | None = None, mapped: bool = False, read_once: bool = False) -> None:
        self._closed = False
        self._file = ArchiveFile(path, objects_root, mapped, read_once)  # mapped, read_once: see ArchiveFile
        self.path = self._file.path
        self._pipelines: dict[str, Pipeline] = {}
        self._indexes: dict[tuple[Any, ...], bytes] = {}  # chunk indexes read and checked, as stored
        self._layout_checked = False
        self._base = base
        self._owns_base = owns_base  # then closed with the archive, on failure here too
        try:
            self._check_header()
            if base is not None:
                self._check_base_shapes()
        except BaseException:
            self.close()
            raise

    # -- header -----------------------------------------------------------------------------

    def _check_header(self) -> None:
        header = self._file.header
        files, tensors = header.get("files"), header.get("tensors")
        if header.get("format") != "zoo" or not isinstance(files, list) or not isinstance(tensors, dict):
            raise _fail(self._file, "archive header lacks its files or tensors")
        self._files: dict[str, dict[str, Any]] = {}
        for entry in files:
            if not isinstance(entry, dict) or not isinstance(entry.get("segments"), list):
                raise _fail(self._file, "archive header has a malformed file entry")
            path = self._checked_relpath(entry.get("path"), "file")
            if path in self._files:
                raise _fail(self._file, f"archive holds {path!r} twice")
            total = 0
            for segment in entry["segments"]:
                if isinstance(segment, dict) and isinstance(segment.get("tensor"), str):
                    tensor = tensors.get(segment["tensor"])
                    if not isinstance(tensor, dict):
                        raise _fail(self._file, f"{path} names tensor {segment['tensor']!r}, which the archive lacks")
                    if "view" in tensor:  # a view's bytes are its storage's: no file holds them as its own
                        raise _fail(self._file, f"{path} holds tensor {segment['tensor']!r}, a view, as bytes of its own")
                    self._check_leaf_shape(tensor, f"tensor {segment['tensor']!r}")
                    total += leaf_bytes(tensor)
                elif isinstance(segment, dict) and isinstance(segment.get("blob"), dict) and isinstance(segment["blob"].get("leaf"), dict):
                    self._check_leaf_shape(segment["blob"]["leaf"], f"a part of {path}")
                    total += leaf_bytes(segment["blob"]["leaf"])
                else:
                    raise _fail(self._file, f"{path} has a malformed segment")
            if type(entry.get("size")) is not int:  # noqa: E721 - 71756.0 and True equal ints, and slice nothing
                raise _fail(self._file, f"{path} has a malformed size {entry.get('size')!r}")
            if total != entry["size"]:
                raise _fail(self._file, f"{path}: segments add up to {total} bytes, the header says {entry.get('size')}")
            mode = entry.get("mode")
            if mode is not None and (type(mode) is not int or not 0 <= mode <= 0o777):
                raise _fail(self._file, f"{path} has a malformed mode {mode!r}")
            storages = entry.get("storages", [])
            named = {segment["tensor"] for segment in entry["segments"] if "tensor" in segment}
            if not isinstance(storages, list) or any(not isinstance(key, str) or key not in named for key in storages):
                raise _fail(self._file, f"{path} has a malformed list of storages")
            self._files[path] = entry
        self._check_tree(header)
        self._features = set(header.get("features") or [])
        if "objects" in self._features:
            # Object files this process holds open from earlier reads, removed or replaced on disk
            # since (zoo rm, a repair by compress --force, gc) by this process or another: this
            # archive reads the files there now, and their disk space comes back.
            let_go_of_replaced_objects()
        for name, info in tensors.items():
            if isinstance(info, dict) and "xor" in info:
                self._check_xor(name, info)
        needed = header.get("base")
        if needed is not None and not (isinstance(needed, dict) and isinstance(needed.get("hint"), str)):
            raise _fail(self._file, "archive header has a malformed base record")
        for name, info in tensors.items():
            if isinstance(info, dict) and "base" in info:
                if needed is None:
                    raise _fail(self._file, f"tensor {name!r} is stored against a base, but the archive names none")
                check_record(info["base"], f"{self.path}: tensor {name!r}")
                if info.get("dtype") not in DELTA_DTYPES:
                    raise _fail(self._file, f"tensor {name!r} of {info.get('dtype')} cannot be stored against a base")
        self._check_encodings(tensors)

    def _check_encodings(self, tensors: dict[str, Any]) -> None:
        """Each tensor entry and the nodes it is encoded as, at every depth and XOR level, as
        reading, verifying and listing take them (docs/FORMAT.md): a node's parts and meta are
        objects, and each leaf has a known dtype and a sound shape. A root that is not a dict (a
        view has none) is refused when the tensor is read."""
        for name, info in tensors.items():
            if not isinstance(info, dict):
                raise _fail(self._file, f"archive header has a malformed entry for tensor {name!r}")
            self._check_leaf_shape(info, f"tensor {name!r}")  # its own dtype and shape, a view's too
            if "view" in info and not isinstance(info["view"], dict):
                raise _fail(self._file, f"tensor {name!r} has a malformed view")
            # every tensor of a model's archive belongs to one of its files, by a name; an object's
            # one tensor (an archive of no files) has neither
            if (self._files or "file" in info or "name" in info) and not (
                    isinstance(info.get("name"), str) and isinstance(info.get("file"), str) and info["file"] in self._files):
                raise _fail(self._file, f"tensor {name!r} lacks its name or the file it belongs to")
            level, what = info, f"tensor {name!r}"
            while isinstance(level, dict):
                self._check_node(level.get("root"), what)
                level, what = level.get("xor"), f"tensor {name!r} (the tensor it is stored against)"

    def _check_node(self, node: Any, what: str) -> None:
        if not isinstance(node, dict):
            return
        if "leaf" in node:
            if not isinstance(node["leaf"], dict):
                raise _fail(self._file, f"{what} has a malformed leaf")
            self._check_leaf_shape(node["leaf"], what)
            return
        parts = node.get("parts") or {}
        if not isinstance(parts, dict):
            raise _fail(self._file, f"{what} has a malformed encoding node: its parts are not an object")
        if not isinstance(node.get("meta") or {}, dict):
            raise _fail(self._file, f"{what} has a malformed encoding node: its meta is not an object")
        for part, child in parts.items():
            self._check_node(child, f"{what} part {part!r}")

    def _check_tree(self, header: dict[str, Any]) -> None:
        """The folders and links restore_links_and_folders makes, checked when the archive opens,
        so that verify refuses what decompress would: each inside the output folder, no path both a
        file, a folder or a link, none made through a link or inside a file, and every link's
        target inside the folder when followed as the kernel follows it, through the archive's own
        links (a target the archive does not hold is fine: a dangling link, as it was stored)."""
        folders, links = header.get("folders") or [], header.get("links") or []
        if not isinstance(folders, list) or not isinstance(links, list) or not all(isinstance(link, dict) for link in links):
            raise _fail(self._file, "archive header has malformed links or folders")
        for link in links:
            path, target = self._checked_relpath(link.get("path"), "link"), link.get("target")
            encoded = _fs_bytes(target) if isinstance(target, str) else None
            if encoded is None or not 0 < len(encoded) <= MAX_LINK_TARGET or b"\0" in encoded:
                raise _fail(self._file, f"link {path!r} has a malformed target")
            if encoded.startswith(b"/"):
                raise _fail(self._file, f"link {path!r} would point outside the output folder")
        self._hard_links = self._checked_hard_links(header)
        root = _Node(None, "folder")
        nodes: dict[str, _Node] = {}  # each path's node in the tree
        entries = [(path, "file", None) for path in [*self._files, *self._hard_links]]  # a hard link is a file of the tree
        entries += [(self._checked_relpath(folder, "folder"), "folder", None) for folder in folders]
        entries += [(link["path"], "link", link["target"]) for link in links]
        for path, kind, target in entries:  # files first: a clash names the folder or link
            node, parts = root, path.split("/")
            for depth, part in enumerate(parts[:-1]):
                node = node.children.setdefault(part, _Node(node, "folder"))
                if node.kind != "folder":
                    above = "/".join(parts[:depth + 1])
                    raise _fail(self._file, f"archive holds {kind} {path!r} inside {above!r}, which it holds as a {node.kind}")
            found = node.children.setdefault(parts[-1], _Node(node, kind, target))
            if found.kind != kind:
                raise _fail(self._file, f"archive holds {path!r} both as a {found.kind} and as a {kind}")
            if kind == "link" and path in nodes:
                raise _fail(self._file, f"archive holds link {path!r} twice")
            nodes[path] = found
        for link in links:
            self._follow(nodes[link["path"]], link["path"], 1)
        modes = header.get("folder_modes") or {}
        if not isinstance(modes, dict) or not all(isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode <= 0o777
                                                  for mode in modes.values()):
            raise _fail(self._file, "archive header has malformed folder modes")
        for path in modes:
            node = root
            for part in self._checked_relpath(path, "folder").split("/"):
                node = node.children.get(part)  # type: ignore[assignment]
                if node is None or node.kind != "folder":
                    raise _fail(self._file, f"archive gives a mode to {path!r}, which it does not hold as a folder")
        self._folder_modes: dict[str, int] = dict(modes)
        root_mode = header.get("root_mode")  # the model folder's own, under the path "" (archives of a folder since 2026-12-06)
        if root_mode is not None:
            if not isinstance(root_mode, int) or isinstance(root_mode, bool) or not 0 <= root_mode <= 0o777:
                raise _fail(self._file, "archive header has a malformed root folder mode")
            self._folder_modes[""] = root_mode
        self._folders: list[str] = list(folders)
        self._links: list[dict[str, str]] = [{"path": link["path"], "target": link["target"]} for link in links]
        path_of, walk = {}, [(root, "")]  # every node's path, the folders no entry names included
        while walk:
            node, path = walk.pop()
            path_of[id(node)] = path
            walk += [(child, f"{path}/{name}" if path else name) for name, child in node.children.items()]
        self._link_targets: dict[str, str | None] = {}
        for link in links:
            node, missing, _ = nodes[link["path"]].resolved  # type: ignore[misc]
            self._link_targets[link["path"]] = None if missing else path_of[id(node)]

    def _checked_hard_links(self, header: dict[str, Any]) -> dict[str, str]:
        """The header's hard links, each path -> the path of the file it is another name of:
        listed with their feature, each a path of its own, each naming a file the archive stores."""
        hard_links = header.get("hard_links")
        if hard_links is None:
            return {}
        if "hard-links" not in (header.get("features") or []):
            raise _fail(self._file, "archive holds hard links, but the header does not list the feature")
        if not isinstance(hard_links, list) or not all(isinstance(link, dict) for link in hard_links):
            raise _fail(self._file, "archive header has malformed hard links")
        found: dict[str, str] = {}
        for link in hard_links:
            path, target = self._checked_relpath(link.get("path"), "hard link"), link.get("target")
            if path in self._files or path in found:
                raise _fail(self._file, f"archive holds {path!r} twice")
            if not isinstance(target, str) or target not in self._files:
                raise _fail(self._file, f"hard link {path!r} names {target!r}, which the archive holds no file of")
            found[path] = target
        return found

    def _checked_relpath(self, path: Any, kind: str) -> str:
        try:
            checked = check_relpath(path)
        except ZooError as error:
            raise _fail(self._file, f"archive holds a {kind} it may not write: {error}") from None
        if _fs_bytes(checked) is None:
            raise _fail(self._file, f"archive holds a {kind} it may not write: {path!r} is no file name here")
        return checked

    def _follow(self, link: _Node, path: str, depth: int) -> tuple[_Node, int, int]:
        """Where `link` leads (see _Node.resolved): its target walked from its folder, through the
        archive's links. A step above the root leaves the output folder. A level the archive holds
        nothing at is counted, and a '..' after it comes back up: a step above the root is refused
        even where the kernel would stop at the missing level. `path`, the link being checked, is
        what an error names."""
        loop = f"link {path!r} goes through a loop of links or more than {MAX_LINK_FOLLOWS} of them"
        if link.resolved is not None:
            return link.resolved
        if depth > MAX_LINK_FOLLOWS:
            raise _fail(self._file, loop)
        node, target = link.parent, link.target
        assert node is not None and target is not None
        link.resolved = (link, 0, MAX_LINK_FOLLOWS + 1)  # met again while it is followed: a loop
        missing, follows = 0, 0
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == ".." and missing:
                missing -= 1
            elif part == "..":
                if node.parent is None:
                    raise _fail(self._file, f"link {path!r} would point outside the output folder")
                node = node.parent
            elif missing or part not in node.children:
                missing += 1
            elif node.children[part].kind == "link":
                node, missing, more = self._follow(node.children[part], path, depth + 1)
                follows += 1 + more
                if follows > MAX_LINK_FOLLOWS:
                    raise _fail(self._file, loop)
            else:
                node = node.children[part]
        link.resolved = (node, missing, follows)
        return link.resolved

    def _check_xor(self, name: str, info: dict[str, Any]) -> None:
        """A tensor stored as an XOR against another: each level a leaf of the tensor's dtype and
        shape, at most MAX_XOR_DEPTH levels."""
        if "xor" not in self._features:
            raise _fail(self._file, f"tensor {name!r} is stored as an XOR, but the header does not list the feature")
        if "base" in info or "view" in info or DTYPES.get(info.get("dtype")) is None or DTYPES[info["dtype"]].storage is None \
                or not isinstance(info.get("root"), dict) or not isinstance(info["root"].get("leaf"), dict):
            raise _fail(self._file, f"tensor {name!r} cannot be stored as an XOR")
        allowed = (info["dtype"], xor_dtype(info["dtype"]))
        if info["root"]["leaf"].get("dtype") not in allowed or info["root"]["leaf"].get("shape") != info.get("shape"):
            raise _fail(self._file, f"tensor {name!r} is stored as an XOR of another dtype or shape")
        level, depth = info, 0
        while "xor" in level:
            level, depth = level["xor"], depth + 1
            root = level.get("root") if isinstance(level, dict) else None
            if depth > MAX_XOR_DEPTH or not isinstance(root, dict) or not isinstance(root.get("leaf"), dict) \
                    or not isinstance(level.get("pipeline"), list):
                raise _fail(self._file, f"tensor {name!r} has a malformed or too deep XOR chain (at most {MAX_XOR_DEPTH} levels)")
            leaf = root["leaf"]
            if leaf.get("dtype") not in allowed or leaf.get("shape") != info.get("shape"):
                raise _fail(self._file, f"tensor {name!r} is an XOR against a tensor of another dtype or shape")

    def xor_depth(self, name: str) -> int:
        """How many tensors a tensor is stored against, by XOR (0: stored as it is)."""
        level, depth = self.tensor_info(name), 0
        while "xor" in level:
            level, depth = level["xor"], depth + 1
        return depth

    # -- the base model ---------------------------------------------------------------------

    @property
    def base_model(self) -> BaseModel | None:
        """The base model the archive was opened with, if any."""
        return self._base

    def base_needed(self) -> dict[str, Any] | None:
        """The header's base record ({"hint": ...}) when tensors are stored against a base."""
        return self._file.header.get("base")

    def base_tensors(self) -> list[str]:
        """Keys of the tensors stored as their difference from the base."""
        return [key for key, info in self._file.header["tensors"].items() if "base" in info]

    def _missing_base(self, what: str) -> InputError:
        hint = self.base_needed()["hint"]  # type: ignore[index]
        # read from Python and from the command line alike: the remedy is named for both
        return InputError(f"{self.path}: {what} stored as a difference from the base model {hint!r}; "
                          "pass that base (base= in Python, --base BASE on the command line)")

    def require_base(self) -> None:
        """Raise InputError unless the base is given or not needed; check every base tensor's
        sha256 now, so that a wrong base fails before anything is written."""
        if self.base_needed() is None:
            return
        if self._base is None:
            count = len(self.base_tensors())
            raise self._missing_base(f"{count} tensor{'s are' if count != 1 else ' is'}")
        for key in self.base_tensors():
            self._base_tensor(key)

    def _check_base_shapes(self) -> None:
        for key in self.base_tensors():
            info = self.tensor_info(key)
            if not self._base.holds(info["base"]["tensor"], info["dtype"], tuple(info["shape"])):  # type: ignore[union-attr]
                self._base_tensor(key)  # raises with the reason

    def _base_tensor(self, key: str) -> TypedArray:
        info = self.tensor_info(key)
        if self._base is None:
            raise self._missing_base(f"tensor {key!r} is")
        return self._base.matching(info["base"]["tensor"], info["base"], info["dtype"], tuple(info["shape"]), self.base_needed()["hint"],
                                   info.get("file"))

    def _check_leaf_shape(self, leaf: dict[str, Any], what: str) -> None:
        shape = leaf.get("shape")
        dtype = leaf.get("dtype")
        if (not isinstance(dtype, str) or dtype not in DTYPES or not isinstance(shape, list)
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise _fail(self._file, f"{what} has a bad dtype or shape")
        if len(shape) > MAX_DIMENSIONS:
            raise _fail(self._file, f"{what} has {len(shape)} dimensions; at most {MAX_DIMENSIONS}")
        if not array_fits(shape, leaf["dtype"]):
            raise _fail(self._file, f"{what} has shape {shape}, too large for any array")

    def metadata(self) -> dict[str, Any]:
        return dict(self._file.header.get("metadata") or {})

    def header(self) -> dict[str, Any]:
        """The archive's header as read (do not modify it)."""
        return self._file.header

    @property
    def objects_root(self) -> Any:
        """Where the objects a version-3 archive names are looked up."""
        return self._file.objects_root

    @property
    def file_size(self) -> int:
        """The archive file's size when it was opened (it may have been removed since)."""
        return self._file.file_size

    def keys(self) -> list[str]:
        return list(self._file.header["tensors"])

    def __contains__(self, name: str) -> bool:
        return name in self._file.header["tensors"]

    def files(self) -> list[dict[str, Any]]:
        keys = ("path", "size", "sha256", "lossless", "kind", "opaque", "mode", "storages")
        return [{k: entry[k] for k in keys if k in entry} for entry in self._files.values()]

    def typed_runs(self) -> list[str]:
        """The files that hold tensor data as typed runs of bytes named by no tensor (a blob of
        another dtype than U8): a torch checkpoint's storages as zoo kept them before it read them
        as tensors, or of a dtype zoo has no name for."""
        return [path for path, entry in self._files.items()
                if any(segment["blob"]["leaf"].get("dtype") != "U8" for segment in entry["segments"] if "blob" in segment)]

    def link_targets(self) -> dict[str, str | None]:
        """Each link's path -> the path inside the folder it leads to, through the archive's own
        links ("" for the folder itself), or None where the archive holds nothing there."""
        return dict(self._link_targets)

    def links(self) -> list[dict[str, str]]:
        """Links kept as links: {"path", "target"} (target relative to the link's folder)."""
        return [dict(link) for link in self._links]

    def hard_links(self) -> dict[str, str]:
        """Each hard link's path -> the path of the file whose bytes it names (one of files())."""
        return dict(self._hard_links)

    def restore_hard_links(self, root: os.PathLike[str] | str) -> tuple[list[str], str | None]:
        """Make the archive's hard links under `root`, after its files: each another name of the
        file it names. Where the file system refuses a hard link (FAT and exFAT, some network and
        FUSE file systems, a file at its limit of links) the name is a copy of the file instead;
        returns those names, and the error that refused the first."""
        copied, refused = [], None
        for path, target in self._hard_links.items():
            name, of = os.path.join(root, path), os.path.join(root, target)
            os.makedirs(os.path.dirname(name), exist_ok=True)
            try:
                os.link(of, name)
                continue
            except OSError as error:
                if error.errno not in HARD_LINKS_REFUSED:
                    raise
                refused = refused or error.strerror
            shutil.copy(of, name)  # the bytes, and the permission bits the file was given
            copied.append(path)
        return copied, refused

    def restore_links_and_folders(self, root: os.PathLike[str] | str) -> None:
        """Make the archive's links and empty folders under `root`, after its files. Opening the
        archive checked them (_check_tree): a link that would lead out of the folder, or a path
        that clashes with another, refused it."""
        for folder in self._folders:
            os.makedirs(os.path.join(root, folder), exist_ok=True)
        for link in self._links:
            os.makedirs(os.path.dirname(os.path.join(root, link["path"])), exist_ok=True)
            os.symlink(link["target"], os.path.join(root, link["path"]))

    def folder_modes(self) -> dict[str, int]:
        """The permission bits of the archive's folders, by path, the model's folder itself under ""
        (archives before them: none)."""
        return dict(self._folder_modes)

    def restore_folder_modes(self, root: os.PathLike[str] | str, paths: Iterable[str]) -> None:
        """Give the folders `paths` under `root` their original permission bits, less what the
        umask removes, and always with the owner's read, write and search: a 0500 folder would
        refuse the next `decompress --force` its files (root alone writes there regardless)."""
        umask = current_umask()
        for path in paths:
            os.chmod(os.path.join(root, path), (self._folder_modes[path] | 0o700) & ~umask)

    def file_entry(self, path: str) -> dict[str, Any]:
        """The record of the file at `path`, or of the file a hard link there names."""
        try:
            return self._files[self._hard_links.get(path, path)]
        except KeyError:
            raise InputError(f"{self.path}: archive holds no file {path!r}") from None  # the caller's mistake, as get_tensor's

    def stored_bytes(self, name: str) -> int:
        """What tensor `name` takes in the payload, its chunk index records included."""
        info = self.tensor_info(name)
        total = 0
        for leaf, what in tensor_leaves(info.get("root"), f"tensor {info.get('name')!r}"):
            index, _, _ = self._chunks(leaf, what)
            total += sum(record[1] for record in index) + CHUNK_RECORD_BYTES * len(index)
        return total

    def coded_as(self, name: str) -> str:
        """What tensor `name`'s record says of its bytes, less where they lie: its dtype, shape,
        pipeline and coding tree (at every XOR level), each leaf's chunks by length and CRC-32.
        Coding is deterministic (the same bytes, pipeline and chunk size give the same chunks), so
        two tensors coded alike hold the same values, as far as CRC-32 can tell; told from the
        chunk indexes alone, nothing decoded. A view's names the tensor it views."""
        what = f"tensor {name!r}"

        def unplaced(value: Any) -> Any:
            if isinstance(value, list):
                return [unplaced(item) for item in value]
            if not isinstance(value, dict):
                return value
            found = {key: unplaced(item) for key, item in value.items() if key != "leaf"}
            if isinstance(value.get("leaf"), dict):
                index, _, _ = self._chunks(value["leaf"], what)
                found["leaf"] = {**{key: item for key, item in value["leaf"].items() if key not in ("index", "index_crc32")},
                                 "chunks": [[length, crc] for _, length, crc in index]}
            return found

        info = self.tensor_info(name)
        return json.dumps(unplaced({key: value for key, value in info.items() if key not in ("name", "file")}), sort_keys=True)

    def tensor_info(self, name: str) -> dict[str, Any]:
        try:
            return self._file.header["tensors"][name]
        except KeyError:
            raise FormatError(f"{self.path}: archive holds no tensor {name!r}") from None

    def pipeline_of(self, configs: list[dict[str, Any]]) -> Pipeline:
        key = repr(configs)
        if key not in self._pipelines:
            self._pipelines[key] = Pipeline.from_configs(configs)
        return self._pipelines[key]

    # -- leaves -----------------------------------------------------------------------------

    def _require_open(self) -> None:
        # a leaf in an object of the zoo would still read after close: refused as the archive's own are
        if self._closed:
            raise InputError(f"{self.path}: the archive is closed (read it inside its `with` block)")

    def _chunks(self, leaf: dict[str, Any], what: str) -> tuple[list[tuple[int, int, int]], int, int]:
        self._require_open()
        n_elements = math.prod(leaf["shape"])
        chunk_elements = leaf.get("chunk_elements")
        if type(chunk_elements) is not int or chunk_elements <= 0:  # JSON's true is 1 to isinstance: not a size
            raise _fail(self._file, f"{what} has a bad chunk size")
        if "object" in leaf and "objects" not in self._features:
            raise _fail(self._file, f"{what} lies in an object, but the header does not list the feature")
        if chunk_elements * DTYPES[leaf["dtype"]].bits // 8 > MAX_CHUNK_BYTES:
            raise _fail(self._file, f"{what} declares chunks of {chunk_elements} elements, over the cap of {MAX_CHUNK_BYTES >> 20} MiB a chunk")
        index = self._index(leaf, what)
        if len(index) != -(-n_elements // chunk_elements):
            raise _fail(self._file, f"{what} has {len(index)} chunks for {n_elements} elements")
        return index, n_elements, chunk_elements

    def _index(self, leaf: dict[str, Any], what: str) -> list[tuple[int, int, int]]:
        """A leaf's chunk index, read and checked against its CRC-32 once per open archive (the
        layout check reads them all), not once per download: a file of a hundred tensors took a
        hundred small reads, each giving up the GIL to the thread sending. Stored bytes never
        change, so an index is known by where it lies, its length and its checksum; it is kept as
        stored, 16 bytes a chunk."""
        try:
            key = (leaf.get("object"), *leaf["index"], leaf["index_crc32"])
            table = self._indexes.get(key)
        except (KeyError, TypeError):  # malformed: index_table says how
            table = None
            key = None
        if table is None:
            table = self._file.index_table(leaf, what)
            if key is not None:
                self._indexes[key] = table
        return list(INDEX_RECORD.iter_unpack(table))

    def _chunk_decoder(self, leaf: dict[str, Any], pipeline: Pipeline, what: str) -> tuple[int, int, Callable[[int], np.ndarray]]:
        """(chunk count, bytes per full chunk, decode(number) -> raw bytes of that chunk) of a leaf."""
        index, n_elements, chunk_elements = self._chunks(leaf, what)
        bits = DTYPES[leaf["dtype"]].bits

        def decode(number: int) -> np.ndarray:
            count = min(chunk_elements, n_elements - number * chunk_elements)
            label = f"{what}, chunk {number}"

            def run(payload: bytes | memoryview) -> np.ndarray:
                try:
                    return pipeline.decode_chunk(payload, leaf["dtype"], count)
                except FormatError as error:
                    raise FormatError(f"{self.path}: {label} is damaged: {error}") from None

            out = self._file.decode_chunk(index[number], label, leaf.get("object"), run)
            if out.nbytes != count * bits // 8:
                raise _fail(self._file, f"{label} decodes to {out.nbytes} bytes, expected {count * bits // 8}")
            return out.view(np.uint8)

        return len(index), chunk_elements * bits // 8, decode

    def _leaf_chunks(self, leaf: dict[str, Any], pipeline: Pipeline, what: str, threads: int = 1) -> Iterator[np.ndarray]:
        """Decoded raw bytes of a leaf, chunk by chunk."""
        count, chunk_bytes, decode = self._chunk_decoder(leaf, pipeline, what)
        yield from ordered_map(decode, range(count), threads, size=lambda number: chunk_bytes)

    def read_leaf(self, leaf: dict[str, Any], pipeline: Pipeline, what: str, threads: int = 1) -> TypedArray:
        count, chunk_bytes, decode = self._chunk_decoder(leaf, pipeline, what)
        if count == 1:
            raw = _owned(decode(0))  # the one chunk is the whole leaf: no copy
        else:
            raw = np.empty(leaf_bytes(leaf), dtype=np.uint8)

            def place(number: int) -> None:
                # The worker that decoded a chunk copies it into place: the copies run in
                # parallel, and no decoded chunk waits for the consumer.
                raw[number * chunk_bytes:(number + 1) * chunk_bytes] = decode(number)

            for_each(place, range(count), threads)
        data = raw.view(storage_dtype(leaf["dtype"])) if DTYPES[leaf["dtype"]].storage else raw
        return TypedArray(data.reshape(leaf["shape"]) if DTYPES[leaf["dtype"]].storage else data, leaf["dtype"])

    # -- tensors ----------------------------------------------------------------------------

    def read_tensor(self, name: str, threads: int = 1) -> TypedArray:
        """A tensor's raw storage, through every stage of its pipeline (plus its base tensor, when
        it is stored against one)."""
        info = self.tensor_info(name)
        if "view" in info:
            return self._read_view(name, threads)
        if "xor" in info:
            words = self._xor_base(info, name, threads)  # the tensor's own leaf, XOR its chain
            return TypedArray(words.view(storage_dtype(info["dtype"])).reshape(info["shape"]), info["dtype"])
        if "base" not in info:
            return self.read_stored(name, threads)
        base = self._base_tensor(name)
        return rebuild(self.read_stored(name, threads), base, info["dtype"])

    def _xor_base(self, level: dict[str, Any], name: str, threads: int) -> np.ndarray:
        """The raw bytes an XOR level decodes to, its own deeper levels applied (checked on open)."""
        leaf = level["root"]["leaf"]
        what = f"tensor {name!r}" + ("" if level is self.tensor_info(name) else " (the tensor it is stored against)")
        self._check_leaf_shape(leaf, what)
        raw = self.read_leaf(leaf, self.pipeline_of(level["pipeline"]), what, threads).data.reshape(-1).view(np.uint8)
        if raw.nbytes != leaf_bytes(leaf):
            raise _fail(self._file, f"{what} decodes to {raw.nbytes} bytes, expected {leaf_bytes(leaf)}")
        if "xor" in level:
            raw = raw if raw.flags.writeable and raw.flags.c_contiguous else raw.copy()
            np.bitwise_xor(raw, self._xor_base(level["xor"], name, threads), out=raw)
        return raw

    def view_layout(self, name: str) -> tuple[str, list[int], list[int], int]:
        """Where a view lies in the storage it views (a torch checkpoint's tied weights or slices):
        (that tensor's name, shape, strides and offset, in its elements; F4 in bytes of two values),
        checked against the storage's own shape."""
        info = self.tensor_info(name)
        view = info["view"]
        of = view.get("of") if isinstance(view, dict) else None
        if not isinstance(of, str) or of == name or of not in self or "view" in self.tensor_info(of):
            raise _fail(self._file, f"tensor {name!r} is a view of nothing readable")
        storage = self.tensor_info(of)
        shape, stride, offset = list(info["shape"]), view.get("stride"), view.get("offset")
        size = math.prod(storage["shape"])
        if info["dtype"] == "F4":  # viewed as torch does, by bytes of two values: the last dimension counts pairs
            if "f4-views" not in self._features:
                raise _fail(self._file, f"tensor {name!r} is a view of F4 values, but the header does not list the feature")
            if not shape or shape[-1] % 2:
                raise _fail(self._file, f"tensor {name!r} views {of!r} with an odd count of F4 values in a row")
            shape[-1] //= 2
            size //= 2
        if storage["dtype"] != info["dtype"] or type(offset) is not int or not isinstance(stride, list) or len(stride) != len(shape) \
                or offset < 0 or any(type(s) is not int or s < 0 for s in stride) \
                or (math.prod(shape) and offset + sum((d - 1) * s for d, s in zip(shape, stride)) >= size):
            raise _fail(self._file, f"tensor {name!r} views {of!r} out of its bounds")
        return of, shape, stride, offset

    def _read_view(self, name: str, threads: int) -> TypedArray:
        of, shape, stride, offset = self.view_layout(name)
        flat = self.read_tensor(of, threads).data.reshape(-1)
        item = flat.itemsize
        # a dimension of one element (or of none) moves nowhere: its stride, whatever it is, is 0 here
        strides = [s * item if d > 1 else 0 for d, s in zip(shape, stride)]
        strided = np.lib.stride_tricks.as_strided(flat[offset:], shape, strides, writeable=False)
        if strided.flags.c_contiguous and strided.size == flat.size:
            # the whole storage as it lies (tied weights): the storage decoded for this read is the tensor
            data = _owned(flat)
        else:
            # a copy of its own, writable as every tensor read is (ascontiguousarray gave the
            # read-only view back as it was where that was contiguous already: a slice's first rows)
            data = strided.copy()
        return TypedArray(data.reshape(shape), self.tensor_info(name)["dtype"])  # 0-d stays 0-d

    def read_stored(self, name: str, threads: int = 1) -> TypedArray:
        """What a tensor's pipeline decodes to: the tensor, or its float32 difference from the base."""
        info = self.tensor_info(name)
        pipeline = self.pipeline_of(info.get("pipeline"))
        root = info.get("root")
        if not isinstance(root, dict):
            raise _fail(self._file, f"tensor {name!r} has no encoding")

        def read_leaf(leaf: dict[str, Any]) -> TypedArray:
            self._check_leaf_shape(leaf, f"tensor {name!r}")
            return self.read_leaf(leaf, pipeline, f"tensor {name!r}", threads)

        result = pipeline.untransform(root, read_leaf, name)
        if DTYPES.get(info["dtype"]) and DTYPES[info["dtype"]].bits % 8 and result.dtype == "U8" and result.data.nbytes == leaf_bytes(info):
            # Values smaller than a byte (F4) are stored as their bytes; given back packed two a byte
            # along the last axis, as torch's float4_e2m1fn_x2 holds them.
            return TypedArray(result.data.reshape(packed_shape(info)), info["dtype"])
        dtype = "F32" if "base" in info else info["dtype"]
        if result.dtype != dtype or list(result.shape) != list(info["shape"]):
            raise _fail(self._file, f"tensor {name!r} decodes to {result.dtype}{list(result.shape)}, expected {dtype}{info['shape']}")
        return result

    def read_tensors(self, names: list[str], threads: int = 1) -> dict[str, TypedArray]:
        """Several tensors, by name in the order given. A tensor of many chunks is decoded on
        `threads` workers, chunk by chunk; those of a few chunks (biases, norms, the matrices of a
        small model) go side by side, a worker each, which is the only way threads help them."""
        many = {name for name in names if self._chunk_count(name) >= 2 * threads}
        few = [name for name in names if name not in many]
        decoded: dict[str, TypedArray] = {}
        for_each(lambda name: decoded.__setitem__(name, self.read_tensor(name)), few, threads)
        decoded.update((name, self.read_tensor(name, threads)) for name in names if name in many)
        return {name: decoded[name] for name in names}

    def _chunk_count(self, name: str) -> int:
        """How many chunks a tensor's leaves hold, as its header says (0 where it is malformed:
        reading the tensor reports that)."""
        total = 0
        for leaf, _ in tensor_leaves(self.tensor_info(name).get("root"), name):
            index = leaf.get("index") if isinstance(leaf, dict) else None
            total += index[1] if isinstance(index, list) and len(index) == 2 and isinstance(index[1], int) else 0
        return total

    def _user_tensor(self, name: str, framework: str) -> None:
        """A name and framework a caller asked for: one it mistyped is its mistake, not damage."""
        if not isinstance(name, str):
            raise InputError(f"a tensor is named by a str, not {type(name).__name__}")
        if name not in self:
            raise InputError(f"{self.path}: archive holds no tensor {name!r}")
        if framework not in _FRAMEWORKS:
            raise InputError(f"unknown framework {framework!r}: use 'np' or 'pt'")

    def get_tensor(self, name: str, framework: str = "np") -> Any:
        """A tensor as numpy (bf16 and fp8 given as exact float32) or, with framework="pt", as torch."""
        self._user_tensor(name, framework)
        return _as_framework(self.read_tensor(name), framework)

    def get_slice(self, name: str, framework: str = "np") -> TensorSlice:
        """A tensor to index like safetensors' get_slice: `archive.get_slice(name)[10:20]` decodes
        only the chunks holding rows 10 to 19 (the whole tensor when array stages encoded it)."""
        self._user_tensor(name, framework)
        return TensorSlice(self, name, framework)

    def read_rows(self, name: str, first: int, stop: int) -> TypedArray:
        """Rows first..stop-1 (along the first axis) of a tensor's raw storage."""
        info = self.tensor_info(name)
        dtype, shape, root = info["dtype"], list(info["shape"]), info.get("root")
        what = f"tensor {name!r}"
        if not isinstance(root, dict) or "leaf" not in root or DTYPES[dtype].storage is None or "base" in info or "xor" in info:
            whole = self.read_tensor(name)
            return TypedArray(whole.data[first:stop], dtype)
        leaf = root["leaf"]
        self._check_leaf_shape(leaf, what)
        if leaf["dtype"] != dtype or list(leaf["shape"]) != shape:
            raise _fail(self._file, f"{what} is stored as {leaf['dtype']}{leaf['shape']}, expected {dtype}{shape}")
        row, itemsize = math.prod(shape[1:]), DTYPES[dtype].bits // 8
        low, high = first * row, stop * row
        raw = np.empty((high - low) * itemsize, dtype=np.uint8)
        if high > low:
            _, _, decode = self._chunk_decoder(leaf, self.pipeline_of(info.get("pipeline")), what)
            per_chunk = leaf["chunk_elements"]
            for number in range(low // per_chunk, -(-high // per_chunk)):
                chunk, begin = decode(number), number * per_chunk
                a, b = max(low, begin), min(high, begin + chunk.nbytes // itemsize)
                raw[(a - low) * itemsize:(b - low) * itemsize] = chunk[(a - begin) * itemsize:(b - begin) * itemsize]
        return TypedArray(raw.view(storage_dtype(dtype)).reshape([stop - first, *shape[1:]]), dtype)

    # -- files ------------------------------------------------------------------------------

    def _segment_size(self, segment: dict[str, Any]) -> int:
        if "tensor" in segment:
            return leaf_bytes(self.tensor_info(segment["tensor"]))
        return leaf_bytes(segment["blob"]["leaf"])

    def iter_file(self, path: str, start: int = 0, end: int | None = None, threads: int = 1,
                  sink: Callable[[int, memoryview], object] | None = None,
                  in_order: Callable[[memoryview], object] | None = None) -> Iterator[bytes | memoryview]:
        """The decoded bytes of one file, in pieces, from `start` up to `end` (exclusive). Only the
        chunks that overlap the range are decoded; `threads` workers decode them in order. With
        `sink(offset from start, piece)` (positioned_writer's), the worker that decoded a piece
        hands it over before it is yielded: the writes run in parallel. With `in_order(piece)`
        (decompress's sha256, which cannot be split), the pieces go through it in file order on
        the workers, where it can be on the one that decoded the piece, while it is in that core's
        cache (parallel.InOrder), and the caller's loop is left with nothing to do."""
        entry = self.file_entry(path)
        self.require_sound_layout()
        end = entry["size"] if end is None else min(end, entry["size"])
        tasks = enumerate(self._file_tasks(entry, start, end))
        turns = InOrder(in_order) if in_order is not None else None

        def decode(numbered: tuple[int, tuple[int, int, Callable[[], np.ndarray]]]) -> memoryview | None:
            number, (position, _, run) = numbered
            try:
                piece = run()
                low, high = max(start, position), min(end, position + len(piece))
                view = memoryview(piece)[low - position:high - position] if low < high else None
                if sink is not None and view is not None:
                    sink(low - start, view)
                if turns is not None:
                    turns.take(number, view)
            except BaseException:
                if turns is not None:  # the pieces after this one would wait for it forever
                    turns.stop()
                raise
            return view

        try:
            for view in ordered_map(decode, tasks, threads, size=lambda numbered: numbered[1][1]):
                if view is not None:
                    yield view
        finally:
            if turns is not None:  # closed early: workers waiting for their turn give up
                turns.stop()

    def _file_tasks(self, entry: dict[str, Any], start: int, end: int) -> Iterator[tuple[int, int, Callable[[], np.ndarray]]]:
        """(file offset, size, decode) for each piece of the file that overlaps [start, end)."""
        position = 0
        for segment in entry["segments"]:
            if position >= end:
                return
            size = self._segment_size(segment)
            if position + size > start:
                yield from self._segment_tasks(segment, entry["path"], position, start, end)
            position += size

    def _segment_tasks(self, segment: dict[str, Any], path: str, position: int, start: int, end: int) -> Iterator[tuple[int, int, Callable[[], np.ndarray]]]:
        if "tensor" in segment:
            name = segment["tensor"]
            info = self.tensor_info(name)
            if "leaf" not in info["root"] or "base" in info or "xor" in info:  # transformed, or against another: decoded whole
                yield position, leaf_bytes(info), lambda: self.read_tensor(name).data.reshape(-1).view(np.uint8)
                return
            leaf, pipeline, what = info["root"]["leaf"], self.pipeline_of(info.get("pipeline")), f"tensor {name!r}"
        else:
            leaf, pipeline, what = segment["blob"]["leaf"], self.pipeline_of(segment["blob"].get("pipeline")), f"file {path!r}"
        self._check_leaf_shape(leaf, what)
        if "tensor" in segment:  # streamed as bytes it would pass where reading the tensor refuses it (read_stored)
            packed = DTYPES.get(info["dtype"]) and DTYPES[info["dtype"]].bits % 8 and leaf["dtype"] == "U8"  # F4, stored as its bytes
            if (leaf["dtype"], leaf["shape"]) != (info["dtype"], info["shape"]) and not (packed and leaf_bytes(leaf) == leaf_bytes(info)):
                raise _fail(self._file, f"{what} decodes to {leaf['dtype']}{leaf['shape']}, expected {info['dtype']}{info['shape']}")
        count, chunk_bytes, decode = self._chunk_decoder(leaf, pipeline, what)
        first, stop = max(0, start - position) // chunk_bytes, position + leaf_bytes(leaf)
        for number in range(first, count):
            offset = position + number * chunk_bytes
            if offset >= end:
                return
            yield offset, min(chunk_bytes, stop - offset), partial(decode, number)

    def read_file(self, path: str, threads: int = 1) -> bytes:
        return b"".join(bytes(piece) for piece in self.iter_file(path, threads=threads))

    def stored_chunks(self, leaf: dict[str, Any], what: str) -> Iterator[bytes]:
        """A leaf's chunks as stored (coded), each checked against its CRC-32."""
        index, _, _ = self._chunks(leaf, what)
        for number, record in enumerate(index):
            yield self._file.read_chunk(record, f"{what}, chunk {number}", leaf.get("object"))

    def _leaves(self) -> Iterator[tuple[dict[str, Any], str]]:
        for name, info in self._file.header["tensors"].items():
            yield from tensor_leaves(info.get("root"), f"tensor {name!r}")
            level = info
            while isinstance(level, dict) and "xor" in level:
                level = level["xor"]
                yield from tensor_leaves(level.get("root"), f"tensor {name!r} (the tensor it is stored against)")
        for path, entry in self._files.items():
            for segment in entry["segments"]:
                if "blob" in segment:
                    yield segment["blob"]["leaf"], f"file {path!r}"

    def require_sound_layout(self) -> None:
        """Refuse an archive whose chunks overlap or leave holes before streaming any of it: index
        records that all point at one chunk would otherwise decode it over and over, without end.
        Checked once per open archive (it reads the chunk indexes, a few bytes per chunk)."""
        if self._layout_checked:
            return
        problems = self.layout_problems(missing_raises=True)
        if problems:
            raise _fail(self._file, f"{problems[0]} (the archive is damaged or was not written by zoo)")
        self._layout_checked = True

    def layout_problems(self, missing_raises: bool = False) -> list[str]:
        """Every stored byte must belong to exactly one chunk or index: no holes, no overlaps. The
        same holds in each object the archive reads from. In an archive of a zoo (the "objects"
        feature) a leaf may be named more than once (a tensor two files hold, a base several tensors
        are stored against), and counts once. A missing object is a problem, or with
        `missing_raises` the error that says so (no fault of the archive's layout)."""
        self._require_open()  # else it would be reported as damage
        regions: dict[str | None, list[tuple[int, int, str]]] = {None: []}
        seen: set[tuple[str | None, int]] = set()
        shared = "objects" in self._file.header.get("features", [])
        for leaf, what in self._leaves():
            obj = leaf.get("object") if isinstance(leaf, dict) else None
            index_at = leaf.get("index", [None])[0] if isinstance(leaf.get("index"), list) and leaf["index"] else None
            if (obj is not None or shared) and (obj, index_at) in seen:
                continue  # this leaf is counted already
            try:
                index, _, _ = self._chunks(leaf, what)
            except ZooError as error:  # named as the other problems are: without the archive's path
                if (missing_raises and isinstance(error, MissingObjectError)) or isinstance(error, StorageError):
                    raise  # a bucket that did not answer damages nothing
                return [str(error).removeprefix(f"{self._file.path}: ")]
            if obj is not None or shared:
                seen.add((obj, index_at))
            offset, count = leaf["index"]
            extents = regions.setdefault(obj, [])
            extents.append((offset, count * 16, f"chunk index of {what}"))
            extents.extend((chunk[0], chunk[1], f"{what}, chunk {number}") for number, chunk in enumerate(index))
        for obj, extents in regions.items():
            size = self._file.payload_size if obj is None else self._object_size(obj)
            where = "" if obj is None else f"object {obj[:16]}...: "
            extents.sort()
            position = 0
            for offset, length, what in extents:
                if offset < position:
                    return [f"{where}{what} overlaps other stored data"]
                if offset > position:
                    return [f"{where}{offset - position} stored bytes before {what} belong to nothing"]
                position = offset + length
            if position != size:
                return [f"{where}{size - position} stored bytes at the end belong to nothing"]
        return []

    def _object_size(self, obj: str) -> int:
        return self._file.object_size(obj, "a leaf")

    def checksum_problems(self) -> list[str]:
        """The stored bytes against their checksums alone (the header, the layout, every chunk
        index and chunk), nothing decoded: what a build checks of an object of the zoo before it
        names it again (reading it is quicker than coding its bytes anew)."""
        problems = self.layout_problems()
        if problems:
            return problems
        try:
            for leaf, what in self._leaves():
                index, _, _ = self._chunks(leaf, what)
                for number, chunk in enumerate(index):
                    self._file.read_chunk(chunk, f"{what}, chunk {number}", leaf.get("object"))
        except ZooError as error:
            return [str(error).removeprefix(f"{self._file.path}: ")]
        return []

    def verify(self, threads: int = 1, served: dict[str, str] | None = None, files: Collection[str] | None = None) -> list[str]:
        """Decode everything; return what is damaged (empty when the archive is sound). Without
        the base, tensors stored against it are checked as stored (every checksum, decoded
        through their pipeline) but not rebuilt. `served`: the sha256 a zoo's manifest records of
        each file as decoding gives it, which a lossy file is held to as a lossless one is to its
        original's (a decoder that changed its bytes, under the hash zoo serve announces).
        `files`: only those files (a zoo's verify, which has checked the objects of the others)."""
        problems = self.layout_problems()
        if problems:  # no file can be streamed: each would report this same problem
            return [f"{self._file.path}: {problem}" for problem in problems]
        found: dict[str, list[str]] = {}
        chosen = [entry for path, entry in self._files.items() if files is None or path in files]

        def check(entry: dict[str, Any], threads: int) -> None:
            found[entry["path"]] = self._verify_file(entry, threads, (served or {}).get(entry["path"]))

        # As decompress does: a sharded model's files side by side (each sha256 runs on one thread).
        shards = sharded(chosen, threads)
        for_each(lambda entry: check(entry, 1), shards, threads)
        for entry in chosen:
            if entry["path"] not in found:
                check(entry, threads)
        for entry in chosen:
            problems.extend(f"{entry['path']}: {problem}" for problem in found[entry["path"]])
        if files is not None:
            return problems
        for name, info in self._file.header["tensors"].items():  # views lie in no file: load_state_dict reads them
            if "view" in info:
                try:
                    self.view_layout(name)
                except ZooError as error:
                    problems.append(str(error))
        return problems

    def _verify_file(self, entry: dict[str, Any], threads: int, served: str | None = None) -> list[str]:
        if self._base is None and any(self.tensor_info(s["tensor"]).get("base") for s in entry["segments"] if "tensor" in s):
            return self._verify_stored(entry, threads)
        digest = hashlib.sha256()
        try:
            for _ in self.iter_file(entry["path"], threads=threads, in_order=digest.update):  # hashed by the decoding workers
                pass
        except ZooError as error:
            return [str(error)]
        if entry.get("lossless") and digest.hexdigest() != entry.get("sha256"):
            return ["decoded bytes do not match the recorded sha256"]
        if entry.get("lossless") and served is not None and served != entry.get("sha256"):
            return ["its manifest records another sha256 than its archive's (what zoo serve announces); storing the model again "
                    "records this one"]
        if not entry.get("lossless") and served is not None and digest.hexdigest() != served:
            return ["decodes to other bytes than the sha256 its manifest records (what zoo serve announces); storing the model "
                    "again records these"]
        return []

    def _verify_stored(self, entry: dict[str, Any], threads: int) -> list[str]:
        for segment in entry["segments"]:
            try:
                if "tensor" in segment:
                    self.read_stored(segment["tensor"], threads)
                else:
                    for _ in self._leaf_chunks(segment["blob"]["leaf"], self.pipeline_of(segment["blob"].get("pipeline")),
                                               f"file {entry['path']!r}", threads):
                        pass
            except ZooError as error:
                return [str(error)]
        return []

    def replaced(self) -> bool:
        """Whether the archive's file was removed or replaced on disk since it was opened."""
        return self._file.replaced()

    def close(self) -> None:
        self._closed = True
        self._file.close()
        if self._owns_base and self._base is not None:
            self._base.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



def positioned_writer(fd: int) -> Callable[[int, memoryview], None]:
    """A sink for Archive.iter_file: each piece written at its offset of the open file `fd`."""

    def write(offset: int, piece: memoryview) -> None:
        while piece:
            done = os.pwrite(fd, piece, offset)
            piece, offset = piece[done:], offset + done

    return write


def _owned(chunk: np.ndarray) -> np.ndarray:
    """A decoded chunk as an array of its own: read-only ones (views of a stored stream) are copied,
    so every tensor read is writable as before."""
    return chunk if chunk.flags.writeable and chunk.flags.c_contiguous else chunk.copy()


_FRAMEWORKS = ("np", "numpy", "pt", "torch")


def _as_framework(array: TypedArray, framework: str) -> Any:
    if framework in ("pt", "torch"):
        from zoo.torch_bridge import to_torch

        return to_torch(array)
    if framework not in ("np", "numpy"):
        raise ZooError(f"unknown framework {framework!r}: use 'np' or 'pt'")
    if array.dtype in ("BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"):  # numpy has none of them
        return to_float32(array.data, array.dtype)
    if array.dtype == "BOOL":
        return array.data.view(np.bool_)
    return array.data


class TensorSlice:
    """What Archive.get_slice returns: shape and dtype without decoding, and indexing by ints,
    slices and Ellipsis, which decodes only the rows the first index touches."""

    def __init__(self, archive: Archive, name: str, framework: str) -> None:
        self._archive, self._name, self._framework = archive, name, framework
        info = archive.tensor_info(name)
        self._shape, self._dtype = list(info["shape"]), info["dtype"]
        # indexed as get_tensor gives it: F4 packed two values a byte along the last axis (read_stored)
        self._indexed = packed_shape(info) if DTYPES[self._dtype].storage is None and self._shape else self._shape

    def get_shape(self) -> list[int]:
        return list(self._shape)

    def get_dtype(self) -> str:
        return self._dtype

    def __len__(self) -> int:
        if not self._indexed:
            raise TypeError("len() of a scalar tensor")
        return self._indexed[0]

    def __getitem__(self, index: Any) -> Any:
        items = list(index) if isinstance(index, tuple) else [index]
        # a bool is an int to Python, but a mask to numpy and torch: refused rather than read as row 0 or 1
        if any(isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer, slice)) and item is not Ellipsis
               for item in items):
            raise ZooError("a tensor slice takes ints, slices and '...' only")
        if items.count(Ellipsis) > 1:
            raise ZooError("a tensor slice takes at most one '...'")
        if Ellipsis in items:
            at = items.index(Ellipsis)
            items[at:at + 1] = [slice(None)] * (len(self._indexed) - len(items) + 1)
        if len(items) > len(self._indexed):
            raise ZooError(f"{len(items)} indices for a tensor of {len(self._indexed)} dimensions")
        if not self._indexed:
            return _as_framework(self._archive.read_tensor(self._name), self._framework)
        rows = self._indexed[0]
        first = items[0] if items else slice(None)
        if isinstance(first, slice):
            span = range(*first.indices(rows))
            low, high = (min(span), max(span) + 1) if span else (0, 0)
            stop = span.stop - low
            local: int | slice = slice(span.start - low, stop if stop >= 0 else None, span.step) if span else slice(0, 0)
        else:
            position = int(first) + rows if int(first) < 0 else int(first)
            if not 0 <= position < rows:
                raise IndexError(f"index {int(first)} is out of bounds for a first axis of {rows}")
            low, high, local = position, position + 1, 0
        part = self._archive.read_rows(self._name, low, high)
        selected = part.data[(local, *items[1:])]
        # one element stays 0-d, as numpy and torch give it (ascontiguousarray makes it 1-d)
        selected = np.ascontiguousarray(selected) if np.ndim(selected) else np.array(selected)
        return _as_framework(TypedArray(selected, part.dtype), self._framework)
