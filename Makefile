# clusterkit — the two commands: `make up` deploys, `make test` runs the whole suite.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_FORCE_COLOR ?= 1
INVENTORY ?= inventory/lab
PLAYBOOK_ARGS ?=

.PHONY: help up down deploy venv collections docker docker-stop test-deps test pyinfra-up pyinfra-check

help:
	@echo "make up        create .venv, collections, Docker engine, then ansible-playbook site.yml"
	@echo "make test      the whole test suite (deploys the lab first)"
	@echo "make down      remove the lab (containers and network)"
	@echo "make pyinfra-up     the same deploy with the pyinfra engine (pyinfra_deploy/)"
	@echo "make pyinfra-check  rerun the pyinfra deploy; fails when it changes anything"

$(VENV)/.installed: requirements.txt app/pyproject.toml
	@echo "venv: installing Python dependencies into $(VENV) ..."
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --progress-bar on -r requirements.txt
	touch $@

venv: $(VENV)/.installed

collections: venv
	@bash scripts/ensure-collections.sh

docker:
	@bash scripts/ensure-docker.sh

# Stops a dockerd that scripts/ensure-docker.sh started (CI uses it to leave nothing running).
docker-stop:
	@if [ -f .cache/dockerd.pid ]; then kill "$$(cat .cache/dockerd.pid)" 2>/dev/null || true; \
	  for _ in $$(seq 1 30); do kill -0 "$$(cat .cache/dockerd.pid)" 2>/dev/null || break; sleep 1; done; \
	  rm -f .cache/dockerd.pid; echo "docker: dockerd stopped"; fi

deploy:
	ansible-playbook -i $(INVENTORY) site.yml $(PLAYBOOK_ARGS)

up: venv collections docker deploy

# The pyinfra engine: the lab is still created by Ansible (playbooks/lab.yml does nothing for
# inventories without a `lab` group), then pyinfra deploys the same roles and templates.
pyinfra-up: venv collections docker
	ansible-playbook -i $(INVENTORY) playbooks/lab.yml
	CLUSTERKIT_INVENTORY=$(INVENTORY) python -m pyinfra_deploy.run

pyinfra-check: venv
	CLUSTERKIT_INVENTORY=$(INVENTORY) python -m pyinfra_deploy.run --check-noop

down: venv collections docker
	ansible-playbook -i $(INVENTORY) playbooks/teardown.yml

# Servers the reference app's own tests start on 127.0.0.1 (no system service is started).
test-deps:
	@bash app/scripts/test-deps.sh >/dev/null && echo "test-deps: redis-server, mongod and etcd binaries ready"

# The suite sets up what it needs itself (venv, collections, docker, test-deps), timing each
# step like the other stages (logs/timings.json).
test:
	@bash scripts/run-tests.sh
