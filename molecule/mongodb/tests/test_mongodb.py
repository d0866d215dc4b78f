"""Verify the mongodb role on a two-member replica set (systemd containers) whose second
member was added to the running set.

Client checks run inside the instance with the role's venv Python and pymongo. The disposable
instance gets the generated passwords in the environment of the check (a docker exec argument).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

testinfra_hosts = ["ansible://mongodb"]

VENV_PYTHON = "/opt/clusterkit/ansible-venv/bin/python"


def secret(name: str) -> str:
    # The role's password lookups write beside the inventory Molecule generated.
    path = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent / ".secrets" / name
    return path.read_text().split(" salt=")[0].strip()


# Runs in the instance: takes the password from $MONGO_PASSWORD, prints one JSON result.
SCRIPT = r"""
import json, os, sys
from pymongo import MongoClient
from pymongo.errors import OperationFailure
from pymongo.write_concern import WriteConcern
action, user, db = sys.argv[1:4]
password = os.environ.get("MONGO_PASSWORD", "")
# hello asks this member; everything else goes to the primary the set reports.
if action == "hello":
    opts = dict(directConnection=True, serverSelectionTimeoutMS=10000)
else:
    opts = dict(replicaSet="rs0", serverSelectionTimeoutMS=10000)
if user != "-":
    opts.update(username=user, password=password, authSource=db)
out = {}
with MongoClient("127.0.0.1", 27017, **opts) as c:
    try:
        if action == "hello":
            out = c.admin.command("hello")
        elif action == "insert":
            coll = c.clusterkit.get_collection("molecule", write_concern=WriteConcern(w="majority"))
            coll.replace_one({"_id": "probe"}, {"_id": "probe", "v": 1}, upsert=True)
            out = {"found": coll.find_one({"_id": "probe"}) is not None}
        elif action == "transaction":
            majority = WriteConcern(w="majority")
            coll = c.clusterkit.get_collection("molecule_tx", write_concern=majority)
            coll.delete_many({})
            with c.start_session() as s:
                with s.start_transaction():
                    coll.insert_one({"_id": 1}, session=s)
                    coll.insert_one({"_id": 2}, session=s)
            with c.start_session() as s:
                s.start_transaction()
                coll.insert_one({"_id": 3}, session=s)
                s.abort_transaction()
            out = {"ids": sorted(d["_id"] for d in coll.find())}
        elif action == "status":
            status = c.admin.command("connectionStatus")["authInfo"]
            members = c.admin.command("replSetGetStatus")["members"]
            config = c.admin.command("replSetGetConfig")["config"]
            out = {
                "users": status["authenticatedUsers"],
                "roles": status["authenticatedUserRoles"],
                "members": sorted(m["stateStr"] for m in members),
                "config": [m["host"] for m in config["members"]],
                "version": config["version"],
            }
    except OperationFailure as exc:
        out = {"error": exc.code}
print(json.dumps(out, default=str))
"""


def mongo(host, action: str, user: str = "-", db: str = "admin", password: str = "") -> dict:
    host.run(f"cat > /tmp/molecule_probe.py <<'EOF'\n{SCRIPT}\nEOF")
    env = f"MONGO_PASSWORD={shlex.quote(password)}"
    result = host.run(f"{env} {VENV_PYTHON} /tmp/molecule_probe.py {action} {user} {db}")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def admin_password() -> str:
    return secret("mongodb_admin_password")


@pytest.fixture(scope="module")
def app_password() -> str:
    return secret("mongodb_app_password")


def test_mongod_enabled_and_running_as_mongodb(host):
    service = host.service("mongod")
    assert service.is_enabled
    assert service.is_running
    assert host.check_output("ps -o user= -C mongod").strip() == "mongodb"


def test_installed_config_passes_mongods_check(host):
    out = host.run("/usr/local/bin/mongod --config /etc/mongod.conf --outputConfig")
    assert out.rc == 0, out.stderr
    assert "replSetName: rs0" in out.stdout
    assert "authorization: enabled" in out.stdout


def test_each_member_sees_both_members_and_a_primary(host):
    hello = mongo(host, "hello")
    assert hello["setName"] == "rs0"
    assert len(hello["hosts"]) == 2
    assert hello["me"] in hello["hosts"]
    assert hello["primary"] in hello["hosts"]
    assert hello["isWritablePrimary"] or hello["secondary"]


def test_unauthenticated_insert_is_refused(host):
    assert mongo(host, "insert") == {"error": 13}


def test_wrong_password_is_refused(host):
    assert mongo(host, "insert", "clusterkit", "clusterkit", "wrong-password") == {"error": 18}


def test_admin_user_is_root(host, admin_password):
    status = mongo(host, "status", "admin", "admin", admin_password)
    assert {"user": "admin", "db": "admin"} in status["users"]
    assert {"role": "root", "db": "admin"} in status["roles"]


def test_second_member_joined_by_reconfiguration(host, admin_password):
    status = mongo(host, "status", "admin", "admin", admin_password)
    assert status["members"] == ["PRIMARY", "SECONDARY"]
    assert len(status["config"]) == 2
    # Initiated once with one member (version 1), then one reconfiguration added the second;
    # MongoDB itself bumps the version again when the new member's votes are granted.
    assert status["version"] >= 2


def test_app_user_writes_with_majority(host, app_password):
    assert mongo(host, "insert", "clusterkit", "clusterkit", app_password) == {"found": True}


def test_app_user_transaction_commits_or_aborts_whole(host, app_password):
    assert mongo(host, "transaction", "clusterkit", "clusterkit", app_password) == {"ids": [1, 2]}


def test_members_authenticate_with_the_keyfile(host):
    keyfile = host.file("/etc/mongodb/keyfile")
    assert keyfile.user == "mongodb"
    assert keyfile.mode == 0o400
    assert len(keyfile.content_string.strip()) == 64
