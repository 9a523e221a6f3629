"""The back-fill benchmark's parts (``scripts/bench.py backfill``): not a test package.

- :mod:`.records`: generated realistic records, and the EHR's Patients/Practitioners seeded;
- :mod:`.procs`: child processes (PeerSync commands, workers) with their peak RSS, and cleanup;
- :mod:`.latency`: a latency-injecting loopback reverse proxy;
- :mod:`.floor`: the raw floor, the naive script, mapping alone;
- :mod:`.peersync_runs`: PeerSync import + sync, single mode through latency, 1 vs 2 workers;
- :mod:`.backfill`: the run itself (phases, figures, environment, output).

And the pages benchmark's (``scripts/bench.py pages``): :mod:`.seed` (two years of an
agency's records and audit log, generated), :mod:`.bulk` (written straight into the
tables), :mod:`.pages` (the run: the admin pages and ``peersync status`` timed).
"""
