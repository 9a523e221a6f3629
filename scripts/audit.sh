#!/usr/bin/env bash
# Audit requirements.lock for known vulnerabilities with pip-audit (PyPI's
# advisory data), from its own hash-locked venv (.venv-audit,
# requirements-audit.lock). Run by scripts/test.sh, so CI runs it.
#   - a known vulnerability fails, unless .pip-audit-ignore lists its id with a reason;
#   - a package pip-audit could not audit (PyPI's per-version JSON API unreachable)
#     is audited from PyPI's project JSON when the locked version is the latest
#     release (that JSON lists the latest release's vulnerabilities); any other
#     is named in a WARNING line, and so is an unreachable service: never a silent pass.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
want=$(sha256sum requirements-audit.lock | cut -c1-16)
if [ ! -x .venv-audit/bin/pip-audit ] || [ "$(cat .venv-audit/.peersync-stamp 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv-audit (pip-audit) ..."
  [ -x .venv-audit/bin/python ] || "$PYTHON" -m venv .venv-audit
  echo '*' > .venv-audit/.gitignore  # keep it out of git status without touching .gitignore
  rm -f .venv-audit/.peersync-stamp
  .venv-audit/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements-audit.lock \
    2>&1 | { grep -v "^WARNING: Location" || true; }
  echo "$want" > .venv-audit/.peersync-stamp
fi

# .pip-audit-ignore: one vulnerability id per line, then "# why it does not apply" (required).
ignores=()
if [ -f .pip-audit-ignore ]; then
  while IFS= read -r line; do
    entry=${line%%#*}; entry=$(echo "$entry" | xargs)
    [ -n "$entry" ] || continue
    reason=${line#*#}
    if [[ "$line" != *"#"* ]] || [ -z "$(echo "$reason" | xargs)" ]; then
      echo "pip-audit: .pip-audit-ignore entry '$entry' has no reason (write: ID  # why)" >&2; exit 1
    fi
    ignores+=(--ignore-vuln "${entry#--ignore-vuln }")
  done < .pip-audit-ignore
fi

out=$(mktemp); err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
rc=0
.venv-audit/bin/pip-audit -r requirements.lock --require-hashes --disable-pip --progress-spinner off \
  --desc off -f json -o "$out" ${ignores[@]+"${ignores[@]}"} 2>"$err" || rc=$?

.venv-audit/bin/python - "$rc" "$out" "$err" ${ignores[@]+"${ignores[@]}"} <<'PY'
import json
import re
import sys
import urllib.request

rc, out, err = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ignored = set(sys.argv[5::2])
locked = {}
for line in open("requirements.lock"):
    m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\;]+)", line)
    if m:
        locked[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[2]
try:
    report = json.load(open(out))
except (OSError, ValueError):
    tail = open(err).read().strip().splitlines()[-3:]
    print("WARNING: pip-audit: the vulnerability service could not be reached; "
          f"requirements.lock ({len(locked)} packages) was NOT audited (pip-audit exit {rc}: "
          + " / ".join(tail) + ")")
    sys.exit(0)

found = [(d["name"], d["version"], v["id"], v.get("fix_versions", []))
         for d in report["dependencies"] for v in d.get("vulns", [])]
skipped = [d["name"] for d in report["dependencies"] if "skip_reason" in d]

# Fallback for what pip-audit skipped: PyPI's project JSON (/pypi/NAME/json)
# lists the vulnerabilities of the latest release.
unaudited, by_fallback = [], 0
for name in skipped:
    key = re.sub(r"[-_.]+", "-", name).lower()
    version = locked.get(key)
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{key}/json", timeout=15) as resp:
            data = json.load(resp)
    except Exception as exc:  # any failure leaves the package unaudited
        unaudited.append(f"{name}=={version} ({type(exc).__name__})")
        continue
    if data["info"]["version"] != version:
        unaudited.append(f"{name}=={version} (latest is {data['info']['version']})")
        continue
    by_fallback += 1
    for v in data.get("vulnerabilities") or []:
        if v.get("withdrawn"):
            continue
        if ignored & {v["id"], *v.get("aliases", [])}:
            continue
        found.append((name, version, v["id"], v.get("fixed_in", [])))

audited = len(report["dependencies"]) - len(skipped) + by_fallback
for name, version, vid, fixes in found:
    print(f"pip-audit: {name}=={version}: {vid} (fixed in: {', '.join(fixes) or 'no fix yet'})")
if skipped:
    print(f"pip-audit: PyPI's per-version JSON API answered for {len(report['dependencies']) - len(skipped)}"
          f" of {len(report['dependencies'])} packages; {by_fallback} audited from PyPI's project JSON"
          " (locked version = latest release)")
if unaudited:
    print(f"WARNING: pip-audit: {len(unaudited)} locked packages could NOT be audited: "
          + ", ".join(unaudited))
if found:
    print(f"pip-audit: {len(found)} known vulnerabilities: raise the lower bound in pyproject.toml"
          " and run scripts/lock.sh, or list the id in .pip-audit-ignore with the reason")
    sys.exit(1)
print(f"pip-audit: no known vulnerabilities in {audited} of {len(locked)} locked packages"
      + (f" ({len(ignored)} ignored by .pip-audit-ignore)" if ignored else ""))
PY
