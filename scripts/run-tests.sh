#!/usr/bin/env bash
# The whole test suite (`make test`): lint, unit and render tests, deploy the lab with
# `ansible-playbook site.yml`, prove a second run changes nothing, test the deployed lab and
# its behaviour under faults (tests/chaos),
# then every Molecule scenario, then a fresh lab deployed with the pyinfra engine (deploy and
# a rerun that changes nothing). Each stage's log goes to logs/; a summary closes the run.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
mkdir -p logs

passed=0 failed=0 failures=()
stage() {
  local name=$1; shift
  local log="logs/${name}.log" start=$SECONDS
  echo "=== ${name}: $* (log: ${log})"
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "    ok (${name}, $((SECONDS - start)) s)"
  else
    failed=$((failed + 1)); failures+=("$name")
    echo "    FAILED (${name}, $((SECONDS - start)) s); last lines of ${log}:"
    tail -n 40 "$log" | sed 's/^/    | /'
  fi
}

stage lint-python ruff check .
stage format-python ruff format --check .
stage lint-ansible ansible-lint
stage unit python -m pytest tests/unit -q
stage app bash -c "cd app && python -m pytest -q"
stage deploy ansible-playbook site.yml
if [ "${failures[*]:-}" != "${failures[*]/deploy/}" ]; then
  echo "    (deploy failed: skipping the idempotence check and the lab tests)"
else
  stage idempotence bash scripts/check-idempotence.sh
  stage lab python -m pytest tests/lab -q
  stage chaos python -m pytest tests/chaos -q
fi
for scenario in molecule/*/molecule.yml; do
  name=$(basename "$(dirname "$scenario")")
  stage "molecule-${name}" molecule test -s "$name"
done

# The pyinfra engine on a fresh lab (README "pyinfra engine"): the same templates and
# variables, a rerun that changes nothing, then the same Testinfra suite as after site.yml.
stage pyinfra-teardown ansible-playbook playbooks/teardown.yml
stage pyinfra-lab ansible-playbook playbooks/lab.yml
stage pyinfra-deploy python -m pyinfra_deploy.run
if [ "${failures[*]:-}" != "${failures[*]/pyinfra-deploy/}" ]; then
  echo "    (pyinfra deploy failed: skipping its idempotence check)"
else
  stage pyinfra-idempotence python -m pyinfra_deploy.run --check-noop
  stage pyinfra-labtests python -m pytest tests/lab -q
fi

echo
echo "failed stages: ${failures[*]:-none}"
echo "stages: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
