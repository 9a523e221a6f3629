"""One wiring object: config -> agency profile, store (with its audit key), EHR client, write plan.

Built in one place and used by the CLI, the web app and ``config check``, so
they cannot drift apart in how a deployment is put together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector.config import Config
    from connector.fhir_client import FhirClient
    from connector.store import Store
    from connector.sync import SyncEngine
    from connector.writeplan import WritePlan
    from mappings.profile import Profile


def make_client(config: Config, plan: WritePlan, profile: Profile, *,
                timeout_s: float | None = None) -> FhirClient:
    """The FHIR client for the configured EHR (auth, CA file, timeouts). Raises ConfigError."""
    from connector.auth import build_auth
    from connector.fhir_client import FhirClient

    # ca_file is relative to the config's folder (as config validation reads it)
    ca_file = str(config.folder / config.ehr.ca_file) if config.ehr.ca_file else None
    timeout = timeout_s or config.ehr.timeout_s
    auth = build_auth(
        config.ehr.auth, base_url=config.ehr.base_url, ca_file=ca_file, timeout_s=timeout,
        base_dir=config.folder,
        # SMART scopes derived from the write plan: only what is written or read
        default_scope=plan.smart_scopes(create_patients=profile.create_patients),
    )
    # one keep-alive connection per request in flight (the sync sends max_in_flight at once)
    return FhirClient(base_url=config.ehr.base_url, timeout_s=timeout, auth=auth,
                      ca_file=ca_file, pool_maxsize=max(10, config.ehr.max_in_flight))


@dataclass
class Wiring:
    config: Config
    profile: Profile
    _plan: WritePlan | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: Path | None = None) -> Wiring:
        """Read ``peersync.toml`` and its agency profile; ConfigError names file and key."""
        from connector.config import load_config
        from mappings.profile import load_profile

        config = load_config(path)
        return cls(config=config, profile=load_profile(config.profile_path()))

    def plan(self, capability: dict[str, Any] | None = None) -> WritePlan:
        """The write plan; ``mode = "auto"`` reads the EHR's CapabilityStatement once."""
        from connector.writeplan import resolve_plan

        if capability is not None:
            return resolve_plan(self.config.ehr, folder=self.config.folder, capability=capability)
        if self._plan is None:
            if self.config.ehr.mode == "auto" and "mode" in self.config.ehr.explicit:
                with self.client() as client:
                    capability = client.capability_statement()
            self._plan = resolve_plan(self.config.ehr, folder=self.config.folder,
                                      capability=capability)
        return self._plan

    def store(self, *, check_schema: bool = True) -> Store:
        from connector.audit_key import load_audit_key
        from connector.store import Store

        key = load_audit_key(self.config.folder, self.config.audit_key_file, os.environ)
        from connector.review import ReviewRule

        store = Store.from_url(self.config.database_url, audit_key=key)
        store.review_rule = ReviewRule.of(self.profile)  # [review]: what waits for review
        if check_schema:
            try:
                store.check_schema()
            except Exception:
                store.close()
                raise
        return store

    def client(self, *, timeout_s: float | None = None) -> FhirClient:
        from connector.writeplan import resolve_plan

        # the client is needed to read the CapabilityStatement for mode = "auto": the
        # scopes do not depend on the mode, so the plan without it serves here
        plan = self._plan or resolve_plan(self.config.ehr, folder=self.config.folder)
        return make_client(self.config, plan, self.profile, timeout_s=timeout_s)

    def engine(self, store: Store, client: FhirClient, *, worker: str | None = None
               ) -> SyncEngine:
        from connector.sync import SyncEngine

        return SyncEngine(store=store, client=client, profile=self.profile, config=self.config,
                          plan=self.plan(), worker=worker)
