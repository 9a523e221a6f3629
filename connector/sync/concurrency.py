"""Requests in flight: run a stage's sends concurrently, each task's own writes in order.

A task is one record's writes of one stage (single mode) or one batch Bundle
holding whole records (batch mode); it runs its requests one after another, and
tasks run side by side, at most ``max_in_flight`` at once. The caller waits for
every task (the stage barrier) and gets the results in task order, so the
ledger's confirmations are written by the caller's thread alone, in one
transaction, as before. Tasks must not touch the store: its connections are
not shared across threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from connector.errors import ConnectorError

if TYPE_CHECKING:
    from connector.store import Store

log = logging.getLogger("peersync.sync")

T = TypeVar("T")


def run_all(tasks: Sequence[Callable[[], T]], max_in_flight: int) -> list[T]:
    """Every task's result, in task order. With one task or ``max_in_flight`` 1: inline.

    An exception a task raises (not a ConnectorError: those are results) is raised
    here once every task has finished.
    """
    if max_in_flight <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    workers = min(max_in_flight, len(tasks))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ehr-send") as pool:
        futures = [pool.submit(task) for task in tasks]
        # leaving the block waits for all of them: no write is still going when the
        # caller records the stage's confirmations
    return [future.result() for future in futures]


class Counter:
    """Adds to a summary's counters from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, target: object, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(target, name, getattr(target, name) + amount)


def group_runs(keys: Sequence[int]) -> list[list[int]]:
    """Indexes grouped by key, groups in order of first appearance, indexes in order."""
    groups: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def chunk_groups(groups: Sequence[list[int]], size: int) -> list[list[int]]:
    """Groups packed into chunks of at most ``size`` indexes, never splitting a group
    (a group larger than ``size`` gets a chunk of its own)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for group in groups:
        if current and len(current) + len(group) > size:
            chunks.append(current)
            current = []
        current.extend(group)
    if current:
        chunks.append(current)
    return chunks


class LeaseRenewal:
    """Renews a claim's lease every ``every_s`` from its own thread, from the claim until
    :meth:`stop` (once its sends have ended: with pipelining that is after the next
    claim was taken)."""

    def __init__(self, store: Store, job_ids: list[int], *, worker: str, lease_s: float,
                 every_s: float) -> None:
        self._done = threading.Event()

        def renew() -> None:
            while not self._done.wait(every_s):
                try:
                    store.renew_lease(job_ids, worker=worker, lease_s=lease_s)
                except ConnectorError:
                    log.warning("lease renewal failed for %d jobs", len(job_ids))

        self._thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


class InFlight:
    """At most ``limit`` requests at once (the EHR client enters it around each request);
    the look-ups the planning of the next claim waits on (:meth:`urgent`) take the next
    free place before any queued write, so the pipeline does not stall behind its own
    sends. A context manager, entered per request."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cond = threading.Condition()
        self._free = limit
        self._urgent_waiting = 0
        self._local = threading.local()

    @contextmanager
    def urgent(self) -> Iterator[None]:
        """This thread's requests meanwhile go first."""
        self._local.urgent = True
        try:
            yield
        finally:
            self._local.urgent = False

    def __enter__(self) -> None:
        urgent = getattr(self._local, "urgent", False)
        with self._cond:
            if urgent:
                self._urgent_waiting += 1
                try:
                    while self._free == 0:
                        self._cond.wait()
                finally:
                    self._urgent_waiting -= 1
            else:
                while self._free == 0 or self._urgent_waiting:
                    self._cond.wait()
            self._free -= 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()


class HeldJobs:
    """The jobs of a pipelined worker's claims whose sends have not ended: never claimed
    again by it, even if their lease ran out meanwhile (``Store.claim(exclude=)``)."""

    def __init__(self) -> None:
        self._ids: set[int] = set()
        self._lock = threading.Lock()

    def add(self, job_ids: set[int]) -> None:
        with self._lock:
            self._ids |= job_ids

    def release(self, job_ids: set[int]) -> None:
        with self._lock:
            self._ids -= job_ids

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._ids)
