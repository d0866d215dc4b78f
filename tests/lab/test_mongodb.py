"""The deployed MongoDB replica set, from the controller the way the app tier sees it: `hello`
on every member, refusal of unauthenticated writes, the application user's majority writes and
reads, a multi-document transaction, the admin user; plus the service on each host.

Run after `ansible-playbook playbooks/data.yml` (or `site.yml`):
`python -m pytest tests/lab/test_mongodb.py`.
"""

from __future__ import annotations

import uuid

import pytest
from pymongo import MongoClient, ReadPreference
from pymongo.errors import OperationFailure
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from tests.conftest import address, group_hosts, secret, testinfra_host

MEMBERS = group_hosts("mongodb")
PORT = 27017
REPLSET = "rs0"
TIMEOUT_MS = 10000


def seeds() -> list[str]:
    return [f"{address(h)}:{PORT}" for h in MEMBERS]


def client(
    user: str | None = None, password: str | None = None, source: str = "admin", **kw
) -> MongoClient:
    options = dict(
        replicaSet=REPLSET, serverSelectionTimeoutMS=TIMEOUT_MS, connectTimeoutMS=TIMEOUT_MS
    )
    if user:
        options.update(username=user, password=password, authSource=source)
    options.update(kw)
    return MongoClient(seeds(), **options)


@pytest.fixture(scope="module", params=MEMBERS)
def member(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def host(member):
    """Testinfra host of each member: `docker exec` for lab hosts, Ansible for any other."""
    return testinfra_host(member)


@pytest.fixture(scope="module")
def app():
    c = client("clusterkit", secret("mongodb_app_password"), source="clusterkit")
    yield c
    c.close()


@pytest.fixture(scope="module")
def admin():
    c = client("admin", secret("mongodb_admin_password"))
    yield c
    c.close()


# ---------------------------------------------------------------- each host


@pytest.mark.smoke
def test_mongod_enabled_running_as_mongodb(host):
    service = host.service("mongod")
    assert service.is_enabled
    assert service.is_running
    assert host.check_output("ps -o user= -C mongod").strip() == "mongodb"


def test_mongod_listens_on_loopback_and_private_address_only(host, member):
    sockets = host.check_output(f"ss -Hltn 'sport = :{PORT}'")
    local = {line.split()[3] for line in sockets.splitlines()}
    assert local == {f"127.0.0.1:{PORT}", f"{address(member)}:{PORT}"}


def test_keyfile_is_private_to_mongodb(host):
    keyfile = host.file("/etc/mongodb/keyfile")
    assert keyfile.user == "mongodb"
    assert keyfile.mode == 0o400


# ---------------------------------------------------------------- the replica set


@pytest.mark.parametrize("member", MEMBERS)
def test_hello_shows_three_members_and_a_primary(member):
    with MongoClient(
        address(member), PORT, directConnection=True, serverSelectionTimeoutMS=TIMEOUT_MS
    ) as c:
        hello = c.admin.command("hello")
    assert hello["setName"] == REPLSET
    assert sorted(hello["hosts"]) == sorted(seeds())
    assert len(hello["hosts"]) == len(MEMBERS) == 3
    assert hello["primary"] in seeds()
    assert hello["isWritablePrimary"] or hello["secondary"]
    assert hello["me"] == f"{address(member)}:{PORT}"


@pytest.mark.smoke
def test_exactly_one_primary_and_healthy_secondaries(admin):
    status = admin.admin.command("replSetGetStatus")
    states = sorted(m["stateStr"] for m in status["members"])
    assert states == ["PRIMARY"] + ["SECONDARY"] * (len(MEMBERS) - 1)
    assert all(m["health"] == 1 for m in status["members"])


@pytest.mark.smoke
def test_unauthenticated_insert_is_refused():
    with client() as anonymous, pytest.raises(OperationFailure) as err:
        anonymous.clusterkit.lab_probe.insert_one({"anonymous": True})
    assert err.value.code == 13  # Unauthorized


def test_wrong_password_is_refused():
    wrong = client("clusterkit", "not-the-password", source="clusterkit")
    with wrong, pytest.raises(OperationFailure) as err:
        wrong.clusterkit.command("ping")
    assert err.value.code == 18  # AuthenticationFailed


@pytest.mark.smoke
def test_app_user_writes_and_reads_with_majority(app):
    coll = app.clusterkit.get_collection(
        "lab_probe",
        write_concern=WriteConcern(w="majority", wtimeout=TIMEOUT_MS),
        read_concern=ReadConcern("majority"),
    )
    marker = uuid.uuid4().hex
    # A causally consistent session: a majority write, then a majority read on a secondary
    # in the same session, sees the write (the secondary waits until it has applied it).
    # Without the session a read may reach the secondary that was not part of the majority
    # before it has applied the write.
    with app.start_session(causal_consistency=True) as session:
        result = coll.insert_one({"_id": marker, "from": "test_mongodb"}, session=session)
        assert result.acknowledged
        assert coll.find_one({"_id": marker}, session=session)["from"] == "test_mongodb"
        if len(MEMBERS) > 1:
            secondary = coll.with_options(read_preference=ReadPreference.SECONDARY)
            assert secondary.find_one({"_id": marker}, session=session) is not None
    coll.delete_one({"_id": marker})


def test_app_user_cannot_write_other_databases(app):
    with pytest.raises(OperationFailure) as err:
        app.get_database("not_clusterkit").probe.insert_one({"x": 1})
    assert err.value.code == 13


def test_transaction_commits_all_or_nothing(app):
    db = app.clusterkit
    coll = db.get_collection(
        "lab_tx", write_concern=WriteConcern(w="majority", wtimeout=TIMEOUT_MS)
    )
    marker = uuid.uuid4().hex
    with (
        app.start_session() as session,
        session.start_transaction(
            write_concern=WriteConcern(w="majority"), read_concern=ReadConcern("snapshot")
        ),
    ):
        coll.insert_one({"_id": f"{marker}-a"}, session=session)
        coll.insert_one({"_id": f"{marker}-b"}, session=session)
    assert coll.count_documents({"_id": {"$in": [f"{marker}-a", f"{marker}-b"]}}) == 2

    aborted = uuid.uuid4().hex
    with app.start_session() as session:
        session.start_transaction()
        coll.insert_one({"_id": aborted}, session=session)
        session.abort_transaction()
    assert coll.count_documents({"_id": aborted}) == 0
    coll.delete_many({"_id": {"$regex": f"^{marker}"}})


def test_admin_user_authenticates_with_root(admin):
    status = admin.admin.command("connectionStatus")
    users = status["authInfo"]["authenticatedUsers"]
    assert {"user": "admin", "db": "admin"} in users
    roles = status["authInfo"]["authenticatedUserRoles"]
    assert {"role": "root", "db": "admin"} in roles


def test_app_user_has_exactly_readwrite_on_clusterkit(admin):
    info = admin.clusterkit.command("usersInfo", "clusterkit")["users"][0]
    assert info["roles"] == [{"role": "readWrite", "db": "clusterkit"}]
