"""Group commit: one fsync covers every write made since the previous one, off the event loop.

Stores append to their files on the event loop (cheap: the OS page cache) and tell the committer they
are dirty. A commit flushes every dirty store's buffered writes to the OS (on the loop, so no write
races the flush), hands duplicated file descriptors to a worker thread that fsyncs them, and when the
thread is done runs the callbacks that were waiting for that commit - publisher confirms, in the
broker. While one commit runs, new writes accumulate for the next, so under load the disk sees one
fsync per batch of messages rather than one per message, and the loop never blocks on the disk.

Contract: a callback registered with ``when_synced`` runs after every byte appended before the
registration is durable, with ``ok=False`` if an fsync failed (the data may not be on disk).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

log = logging.getLogger("conveyor.store")

SyncCallback = Callable[[bool], None]


class Syncable(Protocol):
    def flush_for_sync(self) -> list[int]: ...


def _fsync_all(fds: list[int]) -> None:
    error: OSError | None = None
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as exc:
            error = exc
        finally:
            os.close(fd)
    if error is not None:
        raise error


class GroupCommitter:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conveyor-fsync")
        self._dirty: dict[Syncable, None] = {}  # insertion-ordered set
        self._waiters: list[SyncCallback] = []
        self._running = False
        self._scheduled = False
        self.commits = 0  # for tests and metrics: how many fsync batches ran

    def mark_dirty(self, store: Syncable) -> None:
        """``store`` has writes that are not yet durable; they are committed soon, waited for or not."""
        self._dirty[store] = None
        self._kick()

    def when_synced(self, callback: SyncCallback) -> None:
        self._waiters.append(callback)
        self._kick()

    def _kick(self) -> None:
        if not self._running and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        if self._running:
            return
        fds: list[int] = []
        for store in self._dirty:
            fds.extend(os.dup(fd) for fd in store.flush_for_sync())  # dup: the store may close its own
        self._dirty.clear()
        waiters, self._waiters = self._waiters, []
        if not fds:
            for callback in waiters:
                callback(True)
            return
        self._running = True
        future = self._loop.run_in_executor(self._executor, _fsync_all, fds)
        future.add_done_callback(lambda f: self._done(f, waiters))

    def _done(self, future: asyncio.Future[None], waiters: list[SyncCallback]) -> None:
        self._running = False
        self.commits += 1
        ok = not future.cancelled() and future.exception() is None
        if not ok:
            log.error("fsync failed: %s; messages waiting on it are nacked", future.exception())
        for callback in waiters:
            callback(ok)
        if self._dirty or self._waiters:
            self._kick()

    def sync_now(self) -> None:
        """Flush and fsync everything dirty on this thread (shutdown)."""
        for store in list(self._dirty):
            for fd in store.flush_for_sync():
                os.fsync(fd)
        self._dirty.clear()

    def close(self) -> None:
        self.sync_now()
        self._executor.shutdown(wait=True)
