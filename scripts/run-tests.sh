#!/usr/bin/env bash
# The whole test suite (`make test`), from a fresh machine: set up what is missing (venv,
# collections, Docker engine, the app's test servers), lint, unit and render tests while the
# lab hosts are created, deploy them with `ansible-playbook site.yml`, prove a second run changes
# nothing, test the deployed lab (read-only tests in parallel, then the ones that change
# state) and its behaviour under faults (tests/chaos), then every Molecule scenario (two at
# a time) and beside them a backup, the data hosts destroyed and recreated, and the restore,
# then the pyinfra engine on fresh hosts: its deploy, a rerun that changes
# nothing, `ansible-playbook site.yml --check` reporting changed=0 on the hosts pyinfra
# deployed (both engines reach the same state), and the smoke tests; then the one-host profile
# (inventory/standalone): deploy, rerun with changed=0, smoke tests.
#
# Each stage's log goes to logs/<stage>.log; at the end a table of every stage's duration
# is printed and written to logs/timings.json (name, seconds, status, start offset).
#
#   CLUSTERKIT_INVENTORY   the lab inventory to deploy and test (default inventory/lab)
#   CLUSTERKIT_STANDALONE_INVENTORY  the one-host profile's lab (default inventory/standalone)
#   MOLECULE_JOBS          Molecule scenarios run side by side after the timed stages (default 2)
#   MOLECULE_EARLY_JOBS    ... and before and beside them (default 1)
#   LAB_TEST_JOBS          pytest-xdist workers for the read-only lab tests (default 2)
#   UNIT_TEST_JOBS         pytest-xdist workers for tests/unit (default 2)
#   STAGES                 run only the stages whose names match this regex (e.g. 'molecule-')
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
INVENTORY=${CLUSTERKIT_INVENTORY:-inventory/lab}
STANDALONE=${CLUSTERKIT_STANDALONE_INVENTORY:-inventory/standalone}
TRIXIE=${CLUSTERKIT_TRIXIE_INVENTORY:-inventory/trixie}
export CLUSTERKIT_INVENTORY=$INVENTORY
# Testinfra's ansible:// hosts and every ansible-playbook below use the same inventory.
export ANSIBLE_INVENTORY=$INVENTORY
MOLECULE_JOBS=${MOLECULE_JOBS:-2}
MOLECULE_EARLY_JOBS=${MOLECULE_EARLY_JOBS:-1}
LAB_TEST_JOBS=${LAB_TEST_JOBS:-2}
UNIT_TEST_JOBS=${UNIT_TEST_JOBS:-2}
STAGES=${STAGES:-.}
mkdir -p logs
records=logs/.timings.tsv
: >"$records"
run_start=$EPOCHREALTIME

# stage NAME COMMAND...: runs COMMAND with its output in logs/NAME.log and records the
# stage (also when run in the background: the record goes to a file, not a variable).
stage() {
  local name=$1; shift
  local log="logs/${name}.log" start=$EPOCHREALTIME status
  if ! [[ $name =~ $STAGES ]]; then
    return 0
  fi
  echo "=== ${name}: $* (log: ${log})"
  if "$@" >"$log" 2>&1; then status=passed; else status=failed; fi
  local end=$EPOCHREALTIME
  local seconds offset
  seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  offset=$(awk -v a="$run_start" -v b="$start" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$offset" "$seconds" "$status" "$log" >>"$records"
  if [ "$status" = passed ]; then
    echo "    ok (${name}, ${seconds} s)"
  else
    echo "    FAILED (${name}, ${seconds} s); last lines of ${log}:"
    tail -n 40 "$log" | sed 's/^/    | /'
    # pytest's one-line verdicts and assertion lines, repeated at the end of the run
    # (pytest's first; a play's fatal lines can include expected, rescued failures), and
    # Molecule's verdicts (its failed step, the tasks an idempotence step found changed)
    { grep -E '^(FAILED|ERROR) |^E  ' "$log" || true; grep -E '^fatal: |^failed: ' "$log" | tail -n 5 || true;
      grep -E '^(CRITICAL|ERROR) |^\s*\* \[' "$log" | tail -n 10 || true; } \
      | cut -c1-300 | head -n 30 >"logs/${name}.failures"
    return 1
  fi
}

skip() {
  local name=$1 why=$2
  [[ $name =~ $STAGES ]] || return 0
  echo "=== ${name}: skipped (${why})"
  printf '%s\t%s\t0\tskipped\t-\n' "$name" \
    "$(awk -v a="$run_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')" >>"$records"
}

# Molecule scenarios, the longest first (so the last ones to start are short). They start as
# soon as the host image is there, one at a time while the stages before them run (the lab's
# deploy and tests use about two thirds of two cores; the one-host profiles wait for the
# timed stages), then MOLECULE_JOBS at a time once the lab's timed stages (lab-serial, chaos)
# are over. Each scenario has its own containers (<scenario>-N), ephemeral directory and log;
# the collections are made sure of once, before (the `dependency` step then finds them).
molecule_all() {
  local order=(app mongodb etcd nginx redis haproxy monitoring keepalived loadgen firewall common)
  local scenarios=() name limit
  for name in "${order[@]}"; do
    [ -f "molecule/${name}/molecule.yml" ] && scenarios+=("$name")
  done
  for name in $(ls molecule/*/molecule.yml | xargs -n1 dirname | xargs -n1 basename); do
    [[ " ${scenarios[*]} " == *" ${name} "* ]] || scenarios+=("$name")
  done
  until passed_stage lab-hosts || failed_stage lab-hosts || ! [[ lab-hosts =~ $STAGES ]]; do
    sleep 2
  done
  for name in "${scenarios[@]}"; do
    while :; do
      # A measurement asks for a quiet machine: start nothing, and once the scenarios
      # running have ended, say so (tests/conftest.py, fixture quiet_machine).
      if [ -e "$quiet_dir/request" ]; then
        [ "$(jobs -rp | wc -l)" -eq 0 ] && touch "$quiet_dir/granted"
        sleep 2
        continue
      fi
      rm -f "$quiet_dir/granted"
      limit=$MOLECULE_EARLY_JOBS
      [ -e "$timed_done" ] && limit=$MOLECULE_JOBS
      [ "$(jobs -rp | wc -l)" -lt "$limit" ] && break
      sleep 2
    done
    stage "molecule-${name}" molecule test -s "$name" &
  done
  wait
  touch "$quiet_dir/granted" # this lane has nothing left to run
}

failed_stage() { grep -qP "^$1\t.*\tfailed\t" "$records"; }
passed_stage() { grep -qP "^$1\t[^\t]*\t[^\t]*\tpassed\t" "$records"; }

# -- setup (a fresh machine has none of it; each is quick when already done) ---------------
# Two chains side by side, as they share nothing: the Docker engine and the app's test servers
# (both apt-get, so one after the other), and the venv with the collections (pip, Galaxy).
setup_target() { stage "setup-$1" make --no-print-directory "$1"; }
# promtool and amtool (Debian's packages, unpacked into .cache/promtool, nothing installed) for
# the monitoring unit tests, after test-deps has refreshed apt's lists.
(setup_target docker && setup_target test-deps && stage setup-promtool python3 scripts/promtool.py) &
setup_pid=$!
setup_target venv && setup_target collections
wait "$setup_pid"
for target in venv collections docker test-deps; do
  [[ setup-$target =~ $STAGES ]] || continue
  if ! passed_stage "setup-${target}"; then
    echo "setup failed (setup-${target}, log: logs/setup-${target}.log): cannot run the suite"
    exit 1
  fi
done

# -- role scenarios, a lane of their own from here to the end (see molecule_all) -------------
timed_done=logs/.timed-stages-done
rm -f "$timed_done"
# The Locust gate measures each worker's throughput: while its tests run, the Molecule lane
# starts no scenario and the tests wait until the running ones have ended (request/granted).
quiet_dir=logs/.quiet
rm -rf "$quiet_dir" && mkdir -p "$quiet_dir"
export CLUSTERKIT_QUIET_DIR=$PWD/$quiet_dir
molecule_all &
molecule_pid=$!

# -- static checks and tests without hosts, and beside them the lab's hosts ------------------
# The hosts (image from cache, or built with debootstrap on a fresh machine: mostly downloads
# and unpacking) are created while the checks run, so that `deploy` is the deploy of fresh
# hosts alone.
# The Debian 13 host image (stages trixie-*, below) is built here too, after the lab's.
(
  stage lab-hosts ansible-playbook -i "$INVENTORY" playbooks/lab.yml
  stage trixie-image ansible-playbook -i "$TRIXIE" playbooks/lab.yml --tags lab_image
) &
lab_hosts_pid=$!
stage lint-python ruff check .
stage format-python ruff format --check .
stage lint-ansible ansible-lint
stage unit python -m pytest tests/unit -q -n "$UNIT_TEST_JOBS" --dist loadgroup --durations=15
stage app bash -c "cd app && python -m pytest -q"
wait "$lab_hosts_pid"

# -- the lab, deployed with Ansible ----------------------------------------------------------
stage deploy ansible-playbook -i "$INVENTORY" site.yml
if failed_stage deploy || failed_stage lab-hosts; then
  for name in idempotence lab lab-serial chaos; do skip "$name" "deploy failed"; done
else
  stage idempotence bash scripts/check-idempotence.sh -i "$INVENTORY"
  # Tests that only read state, LAB_TEST_JOBS at a time; then those that stop, restart or
  # redeploy something (marker `serial`), one after another.
  stage lab python -m pytest tests/lab -q -m "not serial" -n "$LAB_TEST_JOBS" --dist loadfile
  stage lab-serial python -m pytest tests/lab -q -m serial --durations=0
  stage chaos python -m pytest tests/chaos -q --durations=0
fi

# The lab's timed stages are over: the Molecule lane may run MOLECULE_JOBS scenarios at once,
# and beside it the one-host profiles and the pyinfra engine on fresh hosts. The three share
# nothing but the host image: the scenarios run on containers and networks of their own
# (<scenario>-N), the one-host profiles on networks of their own, the pyinfra stages on the
# lab's. None of them measures time (the lab stages above ran beside one Molecule scenario at
# most: none beside the Locust gate, whose tests ask for a quiet machine; the failover bounds
# leave room for one).
touch "$timed_done"

# -- the one-host profiles, a lane of their own beside the Molecule scenarios and the pyinfra
# stages: one container each on a network of its own, nothing shared with the 7-host lab.
one_host_profiles() {
  # -- the one-host profile (inventory/standalone) -----------------------------------------
  # One container on a network of its own, reached over SSH as the login user with sudo: the
  # whole stack on one host with the app from its container image (app_install_method: image,
  # Podman; built on the controller), deployed, rerun with changed=0, smoke-tested (the smoke
  # tests include tests/lab/test_ssh.py: a new session after the firewall, and a lockout
  # refused before it reaches the host), the app tier's tests against the image; removed.
  # The pip install on one host over SSH, and the pyinfra engine there, are the trixie stages'.
  standalone_tests() {
    CLUSTERKIT_INVENTORY=$STANDALONE ANSIBLE_INVENTORY=$STANDALONE "$@"
  }
  stage standalone-deploy ansible-playbook -i "$STANDALONE" site.yml -e app_install_method=image
  if failed_stage standalone-deploy; then
    for name in standalone-idempotence standalone-smoke standalone-image-tests; do
      skip "$name" "standalone deploy failed"
    done
  else
    stage standalone-idempotence bash scripts/check-idempotence.sh -i "$STANDALONE" \
      -e app_install_method=image
    stage standalone-smoke standalone_tests python -m pytest tests/lab -q -m smoke
    stage standalone-image-tests standalone_tests python -m pytest -q -m "not serial" \
      tests/lab/test_app.py tests/lab/test_broadcast.py tests/lab/test_frontends.py
  fi
  stage standalone-teardown ansible-playbook -i "$STANDALONE" playbooks/teardown.yml

  # -- Debian 13 (inventory/trixie) ---------------------------------------------------------
  # One host on trixie, reached over SSH as `deploy` whose sudo asks for a password
  # (ansible_become_password): deployed, rerun with changed=0, smoke-tested, converged by the
  # pyinfra engine (rerun without change), removed.
  trixie_tests() {
    CLUSTERKIT_INVENTORY=$TRIXIE ANSIBLE_INVENTORY=$TRIXIE "$@"
  }
  stage trixie-deploy ansible-playbook -i "$TRIXIE" site.yml
  if failed_stage trixie-deploy; then
    for name in trixie-idempotence trixie-smoke trixie-pyinfra trixie-pyinfra-idempotence; do
      skip "$name" "trixie deploy failed"
    done
  else
    stage trixie-idempotence bash scripts/check-idempotence.sh -i "$TRIXIE"
    stage trixie-smoke trixie_tests python -m pytest tests/lab -q -m smoke
    # pyinfra's SSH connector with a sudo password (_sudo_password): converge, then no change.
    stage trixie-pyinfra trixie_tests python -m pyinfra_deploy.run
    stage trixie-pyinfra-idempotence trixie_tests python -m pyinfra_deploy.run --check-noop
  fi
  stage trixie-teardown ansible-playbook -i "$TRIXIE" playbooks/teardown.yml
}
one_host_profiles &
one_host_pid=$!

# First, while the Ansible-deployed lab is still up: backup, the data hosts destroyed and
# recreated by site.yml, restore, every record back (tests/lab/test_backup.py, marker restore).
if failed_stage deploy; then
  skip backup-restore "deploy failed"
else
  stage backup-restore python -m pytest tests/lab -q -m restore --durations=0
fi
stage pyinfra-teardown ansible-playbook -i "$INVENTORY" playbooks/teardown.yml
stage pyinfra-lab ansible-playbook -i "$INVENTORY" playbooks/lab.yml
stage pyinfra-deploy python -m pyinfra_deploy.run
if failed_stage pyinfra-deploy || failed_stage pyinfra-lab; then
  for name in pyinfra-idempotence pyinfra-ansible-check pyinfra-smoke; do
    skip "$name" "pyinfra deploy failed"
  done
else
  stage pyinfra-idempotence python -m pyinfra_deploy.run --check-noop
  # Both engines reach the same state: Ansible in check mode finds nothing to change.
  stage pyinfra-ansible-check bash scripts/check-idempotence.sh --check -i "$INVENTORY"
  stage pyinfra-smoke python -m pytest tests/lab -q -m smoke -n "$LAB_TEST_JOBS" --dist loadfile
fi

wait "$one_host_pid"
wait "$molecule_pid"

echo
python scripts/timings.py "$records" logs/timings.json "$run_start"
failed=$(awk -F'\t' '$4 == "failed"' "$records" | cut -f1 | xargs)
echo "failed stages: ${failed:-none}"
for name in $failed; do
  if [ -s "logs/${name}.failures" ]; then
    echo "--- ${name}: what failed (logs/${name}.log)"
    sed 's/^/    | /' "logs/${name}.failures"
  fi
done
echo "stages: $(awk -F'\t' '$4 == "passed"' "$records" | wc -l) passed," \
  "$(awk -F'\t' '$4 == "failed"' "$records" | wc -l) failed," \
  "$(awk -F'\t' '$4 == "skipped"' "$records" | wc -l) skipped"
[ -z "$failed" ]
