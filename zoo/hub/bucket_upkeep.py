"""`zoo verify` and `zoo doctor` of a zoo on object storage (ZOO_HOME=s3://...): what Store.verify
and Store.doctor do on a folder, read from the bucket itself rather than from this machine's copies.

verify streams each object of the bucket once into a work folder and checks it as a local verify
does (zoo.container.objects.object_problems), then reads each manifest from the bucket and checks that its
objects are there at their recorded sizes and its archive's layout. doctor rebuilds this machine's
index from the bucket's manifests and reports what is damaged or what `zoo gc` would reclaim; it
writes nothing to the bucket and deletes nothing there: an object no manifest names may be a
writer's that is publishing right now (docs/scale-out.md, GC_GRACE_SECONDS).
"""

from __future__ import annotations

import json
import time
from typing import Any

from zoo.errors import ZooError
from zoo.container.objects import object_problems
from zoo.hub.manifest import OBJECT_SUFFIX, Damage, check_record, human_size, needs_damaged
from zoo.hub.remote import GC_GRACE_SECONDS, KeyInfo, StorageError, object_keys


def verify_bucket(store: Any, threads: int = 1) -> tuple[int, int, list[str]]:
    """Store.verify on object storage. Returns (objects, manifests, problems), one line each."""
    from zoo.kernels.parallel import for_each

    storage, problems = store.storage, []
    listed = _objects(storage)
    damaged: set[str] = set()

    with store.workspace() as folder:
        def check(info: KeyInfo) -> None:
            name, shown = _name_of(info.key), f"{storage.url}/{info.key}"
            copy = folder / f"{name}{OBJECT_SUFFIX}"
            try:
                storage.download(info.key, copy)
            except FileNotFoundError:
                listed.pop(info.key, None)  # collected by `zoo gc` since the listing: named by nothing
                return
            except StorageError:  # the bucket cannot be reached: one line, not a damage report per object
                raise
            except (ZooError, OSError) as error:
                problems.append(f"{shown}: cannot be read: {error}")
                return
            try:
                found = object_problems(copy, name, shown)
                if found:
                    damaged.add(name)
                    problems.extend(found)
            finally:
                copy.unlink(missing_ok=True)

        for_each(check, list(listed.values()), threads)

    records = _manifests(store, problems)
    for key, record in records.items():
        found = _missing_objects(store, record, listed) or _archive_problems(store, record, damaged, threads)
        if found and not _still(store, key, record):
            continue  # removed or replaced since it was read (zoo rm and gc, compress --force): its objects went with it
        problems += found
        if damaged:  # the archive's header read again only then
            problems += needs_damaged(_ref(record), damaged & ({o["sha256"] for o in record["objects"]} | store._archive_names(record)))
    return len(listed), len(records), problems


def doctor_bucket(store: Any) -> list[str]:
    """Store.doctor on object storage: this machine's index rebuilt from the bucket's manifests, dead
    work folders here removed, and one line per finding in the bucket (a damaged manifest, an object
    a manifest names that is missing or of another size, a manifest that leaves out objects its
    archive names, which `zoo gc` keeps, an object no manifest or archive names: reclaimable
    by `zoo gc` once older than GC_GRACE_SECONDS, else perhaps a writer's, mid-publish)."""

    store._synced = -1e9  # this machine's copy of the manifests brought up to date now
    if not store.exists():
        return [f"{store.url}: no zoo here yet"]
    findings: list[str] = []
    with store._locked():
        findings += [f"{folder}: work folder of a process that is gone, removed" for folder in store._sweep_work()]
        count = store.rebuild_index()
    listed = _objects(store.storage)
    records = _manifests(store, findings)
    named: set[str] = set()
    for key, record in records.items():
        missing = _missing_objects(store, record, listed)
        if missing and _still(store, key, record):  # else removed or replaced since it was read: its objects went with it
            findings += [Damage(f"{line} (`zoo rm` it, or store it again)") for line in missing]
        listed_here = {item["sha256"] for item in record["objects"]}
        left_out = store._archive_names(record) - listed_here
        if left_out:
            findings.append(f"{_ref(record)}: its manifest leaves out {len(left_out)} of the objects its archive names; "
                            "`zoo gc` keeps them (store the model again with --force to list them)")
        named.update(listed_here | left_out)
    now, reclaimable = time.time(), []
    for key, info in listed.items():
        if _name_of(key) in named:
            continue
        age = now - info.modified
        if age > GC_GRACE_SECONDS:
            reclaimable.append(info)
            findings.append(f"{store.storage.url}/{key}: {human_size(info.size)} that no manifest names, {_age(age)} old; "
                            "`zoo gc` removes it")
        else:
            findings.append(f"{store.storage.url}/{key}: {human_size(info.size)} that no manifest names yet, {_age(age)} old: "
                            f"perhaps a writer's, still publishing; `zoo gc` spares it for {_age(GC_GRACE_SECONDS - age)} more")
    if reclaimable:
        findings.append(f"{store.url}: `zoo gc` would reclaim {len(reclaimable)} object{'' if len(reclaimable) == 1 else 's'}, "
                        f"{human_size(sum(info.size for info in reclaimable))}")
    summary = f"{store.url}: {len(records)} model{'' if len(records) == 1 else 's'}; this machine's index ({store.catalogue}) rebuilt from {count} manifests"
    return findings + [summary + ("" if findings else ", no problems found")]


def _objects(storage: Any) -> dict[str, KeyInfo]:
    return {info.key: info for info in object_keys(storage)}


def _manifests(store: Any, problems: list[str]) -> dict[str, dict[str, Any]]:
    """Every readable manifest in the bucket, by key; each unreadable one, or one out of the place
    its name says (moved or edited by hand), a line in `problems`."""
    storage, records = store.storage, {}
    for info in storage.list("manifests/"):
        if not info.key.endswith(".json"):
            continue
        try:
            records[info.key] = store.check_placed(info.key, check_record(json.loads(storage.read(info.key))))
        except FileNotFoundError:
            continue  # removed by `zoo rm` since the listing
        except StorageError:  # the bucket did not answer: no verdict on the manifest
            raise
        except (ValueError, ZooError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            problems.append(Damage(f"{storage.url}/{info.key}: damaged manifest ({error})"))
    return records


def _missing_objects(store: Any, record: dict[str, Any], listed: dict[str, KeyInfo]) -> list[str]:
    """What `listed`, the objects listed before the manifests were read, says is missing from a
    manifest's objects, or of another size. One the listing lacks is looked up again first: a
    model stored since the listing names objects it could not hold (only those cost a request)."""
    lines = []
    for item in record["objects"]:
        key = store.object_key(item["sha256"])
        found = listed.get(key) or store.storage.stat(key)
        if found is None:
            lines.append(f"{_ref(record)}: object {store.storage.url}/{key} is missing from the bucket")
        elif found.size != item["size"]:
            lines.append(f"{_ref(record)}: object {store.storage.url}/{key} is {found.size} bytes where its manifest says "
                         f"{item['size']}: damaged")
    return lines


def _archive_problems(store: Any, record: dict[str, Any], damaged: set[str], threads: int) -> list[str]:
    """A model's archive checked as Store._archive_problems does, on this machine's copy once it
    holds the bucket's bytes (its sha256 is its name, which the bucket's was held to above); one
    found `damaged` in the bucket is said already, with the model that needs it."""
    if _archive_of(record) in damaged:
        return []
    try:
        store.existing_object(_archive_of(record), archive=True)  # the copy the layout check opens
    except StorageError:
        raise
    except (ZooError, OSError) as error:
        return [f"{_ref(record)}: its archive cannot be fetched: {error}"]
    return store._archive_problems(record, threads)


def _still(store: Any, key: str, record: dict[str, Any]) -> bool:
    """Whether the bucket's manifest `key` still holds `record`, as read before (Store._still)."""
    try:
        return store.check_placed(key, check_record(json.loads(store.storage.read(key)))) == record
    except FileNotFoundError:
        return False
    except StorageError:  # the bucket did not answer: no verdict
        raise
    except (ValueError, ZooError):
        return False  # damaged since: the next verify says so


def _name_of(key: str) -> str:
    return key.rsplit("/", 1)[-1].removesuffix(OBJECT_SUFFIX)


def _archive_of(record: dict[str, Any]) -> str:
    return next(item["sha256"] for item in record["objects"] if item["role"] == "archive")


def _ref(record: dict[str, Any]) -> str:
    return f"{record['name']}@{record['revision']}:{record['variant']}"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
