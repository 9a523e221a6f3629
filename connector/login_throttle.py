"""Login throttling: failed logins counted per (user name, client address) and per address.

Checking and counting are one step: :func:`reserve` locks the counters (a row
lock on PostgreSQL, the write lock SQLite takes for every write transaction),
refuses the attempt if a counter is past its limit, and otherwise counts it as
a failure *before* the password is checked; :func:`settle` gives a successful
attempt back. So N concurrent guesses for one user from one address try at
most the limit, however the hashing interleaves.

Past its limit a counter delays the next attempt rather than locking the
account: 60 s, then 120 s, 240 s... (at most the window), each failure from
the same (user, address) doubling it. The user's own attempts from another
address are never held back by someone else's guesses (behind a proxy, the
address is the client's: see the web app's ``trusted_proxies``). A counter is
forgotten after a whole window without a failure.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update

from connector.schema import login_throttle

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from connector.store import Store

BASE_DELAY_S = 60.0


def keys_for(name: str, address: str | None, *, per_user: int, per_address: int
             ) -> dict[str, int]:
    """The counters an attempt touches and their limits: the (user, address) pair, the address."""
    where = (address or "-")[:64]
    keys = {f"pair:{name[:64]}|{where}": per_user}
    if address:
        keys[f"ip:{where}"] = per_address
    return keys


def delay_s(failures: int, limit: int, window_s: float) -> float:
    """How long after the last failure a counter at ``failures`` holds the next attempt."""
    if failures < limit:
        return 0.0
    return min(window_s, BASE_DELAY_S * 2.0 ** min(failures - limit, 30))


def reserve(store: Store, keys: dict[str, int], *, window_s: float, now: datetime,
            actor: str, address: str | None) -> int:
    """Count one attempt on every key, or refuse it: 0, or the seconds until it may be tried.

    One transaction: the counters are locked, checked and counted together.
    A refusal appends ``login.throttled`` to the audit log.
    """
    window = timedelta(seconds=window_s)
    with store.begin() as conn:
        rows = _locked_rows(store, conn, sorted(keys), now=now)
        until: datetime | None = None
        for key, (failures, last) in rows.items():
            if now - last >= window:
                continue
            held_until = last + timedelta(seconds=delay_s(failures, keys[key], window_s))
            if now < held_until and (until is None or held_until > until):
                until = held_until
        if until is not None:
            store.audit(conn, actor=actor, action="login.throttled",
                        detail={"address": address}, at=now)
            return max(1, int((until - now).total_seconds() + 0.999))
        for key, (failures, last) in rows.items():
            count = 1 if now - last >= window else failures + 1
            conn.execute(update(login_throttle).where(login_throttle.c.key == key)
                         .values(failures=count, window_start=now))
    return 0


def settle(conn: Connection, keys: dict[str, int]) -> None:
    """A successful login: forget the pair's failures, give the address back this attempt."""
    for key in keys:
        if key.startswith("pair:"):
            conn.execute(delete(login_throttle).where(login_throttle.c.key == key))
        else:
            conn.execute(
                update(login_throttle)
                .where(login_throttle.c.key == key, login_throttle.c.failures > 0)
                .values(failures=login_throttle.c.failures - 1)
            )


def _locked_rows(store: Store, conn: Connection, keys: list[str], *, now: datetime
                 ) -> dict[str, tuple[int, datetime]]:
    """Each key's (failures, last failure), its row created if missing and locked."""
    # the dialects' INSERT ... ON CONFLICT, imported here: every CLI command imports this
    # module (through connector.accounts), and only a login needs them
    from sqlalchemy.dialects import postgresql, sqlite

    dialect: Any = postgresql if store.dialect == "postgresql" else sqlite
    conn.execute(
        dialect.insert(login_throttle).on_conflict_do_nothing(index_elements=["key"]),
        [{"key": key, "failures": 0, "window_start": now} for key in keys],
    )
    found = conn.execute(
        select(login_throttle.c.key, login_throttle.c.failures, login_throttle.c.window_start)
        .where(login_throttle.c.key.in_(keys)).order_by(login_throttle.c.key).with_for_update()
    ).all()
    return {row.key: (int(row.failures), _aware(row.window_start)) for row in found}


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
