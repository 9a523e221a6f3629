"""Senders: one per interaction style. Transaction (all or nothing, one Bundle per batch of
records) and staged (batch Bundles or single requests, stage by stage).

Every write of a staged send is recorded in the ledger as intended before it
goes and as confirmed after, so a lost answer is settled by a look-up
(:mod:`connector.sync.recovery`), never by a blind re-send.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

from connector.errors import ConnectorError, EhrConflict, EhrError, EhrOutcomeUnknown, EhrRejected
from connector.fhir_client import entry_results
from connector.sync.concurrency import Counter, chunk_groups, group_runs, run_all
from connector.sync.model import Plan, SyncContext, SyncSummary, Write
from connector.sync.outcomes import Outcomes
from connector.writeplan import STAGES, WritePlan

log = logging.getLogger("peersync.sync")

Result = tuple[str | None, str | None] | ConnectorError


def bundle_for(writes: Sequence[Write], plan: WritePlan, *, kind: str = "transaction"
               ) -> dict[str, Any]:
    """A transaction (or batch) Bundle of the given writes, in order."""
    entries = []
    for write in writes:
        entry: dict[str, Any] = {}
        if not write.ehr_id:
            entry["fullUrl"] = write.full_url
        entry["resource"] = write.resource
        entry["request"] = write.request(plan)
        entries.append(entry)
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


class Sender:
    def __init__(self, ctx: SyncContext, outcomes: Outcomes) -> None:
        self.ctx = ctx
        self.out = outcomes

    def send(self, plans: list[Plan], summary: SyncSummary) -> None:
        raise NotImplementedError

    def refresh(self, write: Write, error: EhrConflict) -> bool:
        """After an If-Match conflict: re-read the current version, once per write.

        True when the write should be sent again with it. Never for an in-place
        amendment (someone's edit in the EHR is not overwritten) nor for a 412
        about multiple matches (a data problem, not a version conflict).
        """
        codes = error.outcome.codes if error.outcome else []
        if write.refreshed or not write.ehr_id or not write.if_match or write.action == "amend" \
                or "multiple-matches" in codes or "duplicate" in codes:
            return False
        current = self.ctx.client.read(write.resource_type, write.ehr_id)
        write.if_match = (current.get("meta") or {}).get("versionId")
        write.refreshed = True
        log.info("%s/%s changed in the EHR meanwhile (If-Match conflict); re-sending once",
                 write.resource_type, write.ehr_id)
        return True


class TransactionSender(Sender):
    def send(self, plans: list[Plan], summary: SyncSummary) -> None:
        bundle = bundle_for([w for plan in plans for w in plan.writes], self.ctx.plan)
        summary.bundles += 1
        summary.requests += 1
        try:
            response = self.ctx.client.transaction(bundle)
        except EhrRejected as exc:
            if len(plans) == 1 and self._refresh_versions(plans[0], exc):
                self.send(plans, summary)  # once, with the current versions
                return
            if len(plans) > 1:
                # All or nothing: find the bad record by sending each alone.
                log.info("transaction of %d records refused (%s); re-sending one by one",
                         len(plans), exc.status)
                for plan in plans:
                    self.send([plan], summary)
                return
            self.out.fail(plans[0].job, exc, summary)
            return
        except EhrError as exc:
            for plan in plans:
                self.out.fail(plan.job, exc, summary)
            return
        results = entry_results(response)
        writes = [w for plan in plans for w in plan.writes]
        if len(results) != len(writes):
            error = EhrOutcomeUnknown(
                f"transaction response has {len(results)} entries for {len(writes)} sent",
                method="POST", url=self.ctx.client.base_url)
            for plan in plans:
                self.out.fail(plan.job, error, summary)
            return
        by_write = dict(zip((id(w) for w in writes), results, strict=True))
        with self.ctx.store.begin() as conn, self.ctx.store.audit_batch(conn):
            self.out.confirm_many(conn, [
                (plan, write, by_write[id(write)].id, by_write[id(write)].version_id)
                for plan in plans for write in plan.writes])
            for plan in plans:
                self.out.synced(conn, plan, [f"{w.resource_type}/{by_write[id(w)].id}"
                                             for w in plan.writes], summary)

    def _refresh_versions(self, plan: Plan, error: EhrRejected) -> bool:
        """A refused single-record transaction: was it a version conflict worth one re-send?"""
        if not isinstance(error, EhrConflict):
            return False
        refreshed = False
        for write in plan.writes:
            if write.ehr_id and write.if_match:
                if not self.refresh(write, error):
                    return False
                refreshed = True
        return refreshed


class StagedSender(Sender):
    """Encounters first, then notes (pointing at the Encounters' real ids), then Provenance.

    Batch entries cannot reference each other, and single requests even less,
    so each stage waits for the ids the previous one produced.

    Within a stage the requests go concurrently, ``[ehr] max_in_flight`` at once
    (:mod:`.concurrency`): one record's writes one after another in plan order,
    different records side by side. Every intent is in the ledger before the
    stage's first request; the confirmations follow once all of them have ended.
    """

    def __init__(self, ctx: SyncContext, outcomes: Outcomes) -> None:
        super().__init__(ctx, outcomes)
        self.max_in_flight = ctx.config.ehr.max_in_flight
        self.counter = Counter()

    def send(self, plans: list[Plan], summary: SyncSummary) -> None:
        store = self.ctx.store
        alive = {plan.job.id: plan for plan in plans}
        for stage in STAGES:
            items = [(plan, w) for plan in alive.values() for w in plan.writes
                     if w.resource_type == stage and not w.done]
            if not items:
                continue
            for plan, write in items:
                literalize(write.resource, plan.ids)
            latest = store.ledger_latest_many(
                [(w.resource_type, w.system, w.value) for _, w in items if not w.ehr_id])
            intents = []
            for plan, write in items:
                prior = latest.get((write.resource_type, write.system, write.value))
                # the version the EHR held before: an in-place change in doubt is
                # settled by seeing it move on (see recovery)
                before = write.if_match if write.ehr_id else \
                    (prior.ehr_version if prior else None)
                intents.append((plan, write, write.ehr_id, before))
            with store.begin() as conn:
                self.out.confirm_many(conn, intents, state="sent")
            # the requests go concurrently (max_in_flight), each record's in plan order;
            # the confirmations below are written here, once every request has ended
            if self.ctx.plan.mode == "batch":
                outcomes = self._send_batch(items, summary)
            else:
                outcomes = self._send_single(items, summary)
            failed: dict[int, ConnectorError] = {}
            confirmed = []
            for (plan, write), outcome in zip(items, outcomes, strict=True):
                if isinstance(outcome, ConnectorError):
                    failed.setdefault(plan.job.id, outcome)
                    continue
                ehr_id, version = outcome
                confirmed.append((plan, write, ehr_id, version))
            with store.begin() as conn:
                self.out.confirm_many(conn, confirmed)
            for plan, write, ehr_id, _ in confirmed:
                write.ehr_id = write.ehr_id or ehr_id
                write.done = True
                plan.ids[write.full_url] = f"{write.resource_type}/{write.ehr_id}"
            for job_id, error in failed.items():
                self.out.fail(alive.pop(job_id).job, error, summary)
        if alive:
            with store.begin() as conn, store.audit_batch(conn):  # outcomes in one go
                for plan in alive.values():
                    self.out.synced(conn, plan, [f"{w.resource_type}/{w.ehr_id}"
                                                 for w in plan.writes], summary)

    def _send_single(self, items: list[tuple[Plan, Write]], summary: SyncSummary
                     ) -> list[Result]:
        """One request per write: a task per record (its writes in order), tasks in parallel."""
        groups = group_runs([plan.job.id for plan, _ in items])

        def task(indexes: list[int]) -> list[Result]:
            return [self._send_one(items[i][1], summary) for i in indexes]

        results = run_all([partial(task, group) for group in groups], self.max_in_flight)
        return _in_item_order(len(items), groups, results)

    def _send_one(self, write: Write, summary: SyncSummary) -> Result:
        client, plan = self.ctx.client, self.ctx.plan
        self.counter.add(summary, "requests")
        try:
            if write.resource_type == "Provenance":
                result = client.create(write.resource)
            elif write.ehr_id:
                write.resource["id"] = write.ehr_id
                try:
                    result = client.update(write.resource, resource_id=write.ehr_id,
                                           if_match=write.if_match)
                except EhrConflict as exc:
                    if not self.refresh(write, exc):
                        raise
                    result = client.update(write.resource, resource_id=write.ehr_id,
                                           if_match=write.if_match)
            elif plan.conditional_update:
                result = client.update(write.resource, conditional=f"identifier={write.token}")
            elif plan.conditional_create:
                result = client.create(write.resource, if_none_exist={"identifier": write.token})
            else:
                result = client.create(write.resource)
        except ConnectorError as exc:
            return exc
        return result.id, result.version_id

    def _send_batch(self, items: list[tuple[Plan, Write]], summary: SyncSummary) -> list[Result]:
        """Batch Bundles of whole records (a record's writes never span two bundles, so
        they cannot overtake each other), up to max_in_flight bundles at once."""
        size = self.ctx.config.ehr.max_bundle_entries
        in_flight = self.max_in_flight
        groups = group_runs([plan.job.id for plan, _ in items])
        if in_flight <= 1 or any(len(group) > size for group in groups):
            # one bundle after another, cut where the size says (as before)
            chunks = [list(range(start, min(start + size, len(items))))
                      for start in range(0, len(items), size)]
            in_flight = 1
        else:
            chunks = chunk_groups(groups, size)
        for _, write in items:
            if write.ehr_id:
                write.resource["id"] = write.ehr_id
        results = run_all([partial(self._send_chunk, [items[i][1] for i in chunk], summary)
                           for chunk in chunks], in_flight)
        return _in_item_order(len(items), chunks, results)

    def _send_chunk(self, chunk: list[Write], summary: SyncSummary) -> list[Result]:
        self.counter.add(summary, "bundles")
        self.counter.add(summary, "requests")
        try:
            response = self.ctx.client.batch(bundle_for(chunk, self.ctx.plan, kind="batch"))
            results = entry_results(response)
            if len(results) != len(chunk):
                raise EhrOutcomeUnknown(
                    f"batch response has {len(results)} entries for {len(chunk)} sent",
                    method="POST", url=self.ctx.client.base_url)
        except ConnectorError as exc:
            return [exc for _ in chunk]
        outcomes: list[Result] = []
        for write, result in zip(chunk, results, strict=True):
            if result.ok:
                outcomes.append((result.id, result.version_id))
                continue
            error = entry_error(result, write, self.ctx)
            if isinstance(error, EhrConflict) and self.refresh(write, error):
                outcomes.append(self._send_one(write, summary))  # once, alone
            else:
                outcomes.append(error)
        return outcomes


def _in_item_order(count: int, groups: list[list[int]], results: list[list[Result]]
                   ) -> list[Result]:
    """Per-group results put back at their items' places."""
    ordered: list[Result | None] = [None] * count
    for group, group_results in zip(groups, results, strict=True):
        for index, result in zip(group, group_results, strict=True):
            ordered[index] = result
    assert all(result is not None for result in ordered)
    return [result for result in ordered if result is not None]


def sender_for(ctx: SyncContext, outcomes: Outcomes) -> Sender:
    return StagedSender(ctx, outcomes) if ctx.plan.staged else TransactionSender(ctx, outcomes)


def literalize(node: Any, ids: dict[str, str]) -> None:
    """Replace references to urn:uuid fullUrls with the literal ids they were written as."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in ids:
            node["reference"] = ids[ref]
        for value in node.values():
            literalize(value, ids)
    elif isinstance(node, list):
        for item in node:
            literalize(item, ids)


def entry_error(result: Any, write: Write, ctx: SyncContext) -> ConnectorError:
    """A failed batch entry as the same exception a single request would have raised."""
    from connector.errors import error_class_for

    base_url = ctx.client.base_url
    status = int(result.status or 0)
    codes = result.outcome.codes if result.outcome else []
    message = (f"EHR refused batch entry {write.request(ctx.plan)['method']} "
               f"{write.resource_type} ({status}"
               + (f"; OperationOutcome codes: {', '.join(codes)}" if codes else "") + ")")
    if status == 0:
        return EhrOutcomeUnknown(f"batch entry for {write.resource_type} has no status",
                                 method="POST", url=base_url)
    cls = error_class_for(status)
    return cls(message, status=status, method="POST", url=base_url, outcome=result.outcome)
