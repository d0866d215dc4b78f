#!/usr/bin/env bash
# Runs `ansible-playbook site.yml` again and fails unless every host reports changed=0.
#
#   scripts/check-idempotence.sh [--check] [ansible-playbook options, e.g. -i INVENTORY]
#
# --check runs site.yml in check mode (nothing is changed): on hosts deployed by another
# engine (pyinfra_deploy), changed=0 there means both engines reach the same state.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=()
what="the second run"
if [ "${1:-}" = "--check" ]; then
  shift
  mode=(--check)
  what="site.yml in check mode"
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
ANSIBLE_FORCE_COLOR=0 ansible-playbook "${mode[@]}" "$@" site.yml | tee "$out"
if ! grep -qE '^PLAY RECAP' "$out"; then
  echo "no play recap in the output of ansible-playbook" >&2
  exit 1
fi
changed=$(grep -E '^[^ ].*: ok=[0-9]+ +changed=[1-9]' "$out" || true)
if [ -n "$changed" ]; then
  echo "not idempotent: ${what} changed (or would change) something:" >&2
  echo "$changed" >&2
  grep -E '^(changed|TASK)' "$out" | grep -B1 '^changed' >&2 || true
  exit 1
fi
echo "idempotent: changed=0 on every host (${what})"
