#!/usr/bin/env bash
# Runs `ansible-playbook site.yml` again and fails unless every host reports changed=0.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
ANSIBLE_FORCE_COLOR=0 ansible-playbook "$@" site.yml | tee "$out"
changed=$(grep -E '^[^ ].*: ok=[0-9]+ +changed=[1-9]' "$out" || true)
if [ -n "$changed" ]; then
  echo "not idempotent: the second run changed something:" >&2
  echo "$changed" >&2
  grep -E '^(changed|TASK)' "$out" | grep -B1 '^changed' >&2 || true
  exit 1
fi
echo "idempotent: changed=0 on every host"
