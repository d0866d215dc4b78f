#!/usr/bin/env bash
# Installs the collections pinned in requirements.yml into ./collections from Ansible
# Galaxy. Where Galaxy is unreachable, checks that the `ansible` package in ./.venv ships
# exactly the pinned versions instead (it bundles them), and uses those.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv/bin
stamp=collections/.installed
mkdir -p .cache collections
# Molecule's dependency step runs this for every scenario, and scenarios run side by side:
# one install at a time, the others wait and then find the stamp.
exec 9>.cache/collections.lock
flock 9
if [ -f "$stamp" ] && [ "$stamp" -nt requirements.yml ]; then
  exit 0
fi
if "$venv/ansible-galaxy" collection install -r requirements.yml -p collections >.cache/galaxy.log 2>&1; then
  echo "collections: pinned versions present (.cache/galaxy.log)"
  touch "$stamp"
  exit 0
fi
echo "collections: Galaxy unreachable; checking the collections bundled in .venv ..."
"$venv/python" - <<'PY'
import json, subprocess, sys, yaml
wanted = yaml.safe_load(open("requirements.yml"))["collections"]
out = subprocess.run([".venv/bin/ansible-galaxy", "collection", "list", "--format", "json"],
                     capture_output=True, text=True, check=True).stdout
have = {}
for path, cols in json.loads(out).items():
    for name, info in cols.items():
        have.setdefault(name, info["version"])
bad = [f"{c['name']} {c['version']} (found {have.get(c['name'], 'none')})"
       for c in wanted if have.get(c["name"]) != c["version"]]
if bad:
    sys.exit("collections: pinned versions not available: " + ", ".join(bad))
print("collections: using the bundled versions pinned in requirements.yml")
PY
mkdir -p collections
touch "$stamp"
