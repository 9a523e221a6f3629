"""The sync: claim due jobs, resolve references, plan against the EHR's write plan, send.

Modules, in the order a record goes through them:

- :mod:`.engine`: the worker loop (claim, lease, prepare, send);
- :mod:`.resolve`: Patient, Practitioner, Organization/Device, the EHR's Encounter;
- :mod:`.planner`: record + references + write plan + ledger -> writes (pure);
- :mod:`.senders`: transaction, or staged (batch Bundles / single requests);
- :mod:`.recovery`: settle writes whose answer was lost, before any re-send;
- :mod:`.outcomes`: the job's new state, ledger rows, audit events;
- :mod:`.model`: the value objects they share.
"""

from connector.sync.agency import ensure_agency
from connector.sync.engine import SyncEngine
from connector.sync.model import EmptyLedger, Plan, Refs, SyncContext, SyncSummary, Wait, Write
from connector.sync.planner import Planned, plan_record
from connector.sync.rules import wait_rule
from connector.sync.senders import bundle_for

__all__ = ["EmptyLedger", "Plan", "Planned", "Refs", "SyncContext", "SyncEngine", "SyncSummary",
           "Wait", "Write", "bundle_for", "ensure_agency", "plan_record", "wait_rule"]
