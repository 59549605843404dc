"""Roots that are offline: "I cannot see it" is never "it is gone".

A folder given to ``mmsearch index`` is remembered with its device and the mount it lies
on. On later runs a root is OFFLINE — its items are kept, not removed — when it is
missing, when the mount it lay on is no longer mounted, when it is on another device than
before and none of its files is found, or when it is empty where it held items (an
unmounted mount point is an empty folder). ``prune`` turns that protection off: what is
not there is removed. A run that would still remove more than :data:`PRUNE_SHARE` of a
root's items (and more than :data:`PRUNE_MIN` of them) stops before removing any
(:class:`mmsearch.errors.PruneRequired`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from mmsearch.catalog_base import RootRecord

#: A run that would remove more than this share of a root's items stops and asks …
PRUNE_SHARE = 0.5
#: … when that is more than this many items.
PRUNE_MIN = 10


def mount_points(mountinfo: str = "/proc/self/mountinfo") -> frozenset[str]:
    """The mount points of this machine (``/`` at least)."""
    found = {"/"}
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4:
                    found.add(parts[4].replace("\\040", " "))
    except OSError:
        pass
    return frozenset(found)


def mount_of(path: str, mounts: Collection[str]) -> str:
    """The mount point ``path`` lies on: the longest mount point above its real path."""
    real = os.path.realpath(path)
    best = "/"
    for point in mounts:
        prefix = point.rstrip("/") + "/"
        if (real == point or real.startswith(prefix)) and len(point) > len(best):
            best = point
    return best


@dataclass
class RootState:
    """What this run makes of one root."""

    path: str
    online: bool
    reason: str = ""
    device: int | None = None
    mount_point: str | None = None


def judge_roots(
    roots: Sequence[str],
    found: Collection[str],
    previous: dict[str, RootRecord],
    items_under: Callable[[str], int],
    prune: bool,
    mounts: Collection[str] | None = None,
) -> list[RootState]:
    """Which roots are offline, and why.

    Args:
        roots: absolute paths of the folders given.
        found: paths the walk found (under any root).
        previous: what the last runs recorded of each root.
        items_under: how many items the catalog holds under a folder.
        prune: the user said to remove what is not there: no root is offline.
        mounts: this machine's mount points (default: read them).
    """
    mounts = mount_points() if mounts is None else mounts
    states = []
    for root in roots:
        held = items_under(root)
        before = previous.get(root)
        try:
            st = os.stat(root)
        except OSError:
            st = None
        state = RootState(root, True)
        if st is not None:
            state.device, state.mount_point = st.st_dev, mount_of(root, mounts)
        if prune or not (held or before):
            states.append(state)
            continue
        prefix = root.rstrip("/") + "/"
        inside = sum(1 for p in found if p.startswith(prefix) or p == root)
        if st is None:
            state.online, state.reason = False, "missing (an unplugged drive or network share?)"
        elif before and before.mount_point not in (None, "/") and before.mount_point not in mounts:
            state.online = False
            state.reason = f"its drive is not mounted ({before.mount_point})"
        elif held and not inside:
            state.online = False
            state.reason = f"empty, though it held {held} items (an unmounted drive?)"
        elif before and before.device not in (None, st.st_dev) and held and not inside:
            state.online, state.reason = False, "on another device than before"
        states.append(state)
    return states


def records(states: Sequence[RootState], items_under: Callable[[str], int]) -> list[RootRecord]:
    """What to remember of the roots after the run."""
    now = time.time()
    return [
        RootRecord(s.path, s.device, s.mount_point, items_under(s.path), s.online, s.reason, now)
        for s in states
    ]


def under_any(path: str, folders: Collection[str]) -> bool:
    """Whether ``path`` lies under (or is) one of ``folders``."""
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)
