"""Logical backup and restore of one database of the replica set (needs pymongo).

    mongodb-backup.py dump    --user U --db ADMIN_DB --database D --out FILE [--host H] [--port P]
        Reads every collection of database D from this member (a secondary is fine) inside one
        snapshot session (readConcern "snapshot": every collection as of the same cluster time,
        whatever is written meanwhile) and writes FILE, a gzip'd tar of
            metadata.json           database, cluster time of the snapshot, per collection its
                                    options, indexes and document count
            <collection>.bson       the documents, concatenated BSON (as mongodump writes them)
        The snapshot must be read within minSnapshotHistoryWindowInSeconds (300 s by default).
    mongodb-backup.py restore --user U --db ADMIN_DB --database D --from FILE --host H [--port P]
        Into the primary H: each collection of FILE is dropped, created with its options and
        indexes, and refilled with write concern majority. Collections of D that FILE does
        not hold are left alone.

Passwords are read from stdin so that they never appear on a command line. Prints one JSON
object with what it did.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile

from bson import decode_file_iter, json_util
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.write_concern import WriteConcern

RAW = CodecOptions(document_class=RawBSONDocument)
BATCH = 1000


def client(args: argparse.Namespace, password: str) -> MongoClient:
    return MongoClient(
        host=args.host,
        port=args.port,
        directConnection=True,
        username=args.user,
        password=password,
        authSource=args.db,
        serverSelectionTimeoutMS=10000,
    )


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def dump(args: argparse.Namespace, password: str) -> dict:
    mongo = client(args, password)
    db = mongo.get_database(args.database, codec_options=RAW)
    infos = [i for i in db.list_collections() if i.get("type", "collection") == "collection"]
    meta: dict = {"database": args.database, "collections": {}}
    tmp = args.out + ".part"
    with mongo.start_session(snapshot=True) as session, tarfile.open(tmp, "w:gz") as tar:
        for info in sorted(infos, key=lambda i: i["name"]):
            name = info["name"]
            if name.startswith("system."):
                continue
            with tempfile.TemporaryFile() as docs:
                count = 0
                for doc in db[name].find({}, session=session, batch_size=BATCH):
                    docs.write(doc.raw)
                    count += 1
                docs.seek(0, os.SEEK_END)
                size = docs.tell()
                docs.seek(0)
                entry = tarfile.TarInfo(f"{name}.bson")
                entry.size = size
                entry.mode = 0o600
                tar.addfile(entry, docs)
            indexes = [dict(i) for i in db[name].list_indexes()]
            meta["collections"][name] = {
                "options": dict(info.get("options", {})),
                "indexes": indexes,
                "count": count,
            }
        meta["cluster_time"] = session.operation_time
        add_bytes(tar, "metadata.json", json_util.dumps(meta, indent=1).encode())
    os.replace(tmp, args.out)
    return {
        "database": args.database,
        "version": mongo.server_info()["version"],
        "collections": {n: c["count"] for n, c in meta["collections"].items()},
        "cluster_time": json.loads(json_util.dumps(meta["cluster_time"])),
    }


def restore(args: argparse.Namespace, password: str) -> dict:
    mongo = client(args, password)
    db = mongo.get_database(
        args.database, codec_options=RAW, write_concern=WriteConcern(w="majority", j=True)
    )
    restored = {}
    with tarfile.open(args.source, "r:gz") as tar:
        meta_file = tar.extractfile("metadata.json")
        if meta_file is None:
            sys.exit(f"{args.source}: no metadata.json")
        meta = json_util.loads(meta_file.read())
        if meta["database"] != args.database:
            sys.exit(f"{args.source} holds database {meta['database']}, not {args.database}")
        for name, spec in meta["collections"].items():
            db.drop_collection(name)
            db.create_collection(name, **spec["options"])
            indexes = [
                {k: v for k, v in index.items() if k not in ("v", "ns")}
                for index in spec["indexes"]
                if index["name"] != "_id_"
            ]
            if indexes:
                db.command("createIndexes", name, indexes=indexes)
            member = tar.extractfile(f"{name}.bson")
            if member is None:
                sys.exit(f"{args.source}: no {name}.bson")
            batch, count = [], 0
            for doc in decode_file_iter(member, RAW):
                batch.append(doc)
                if len(batch) == BATCH:
                    db[name].insert_many(batch, ordered=True)
                    count += len(batch)
                    batch = []
            if batch:
                db[name].insert_many(batch, ordered=True)
                count += len(batch)
            if count != spec["count"]:
                sys.exit(f"{name}: restored {count} documents, the backup lists {spec['count']}")
            restored[name] = count
    return {"database": args.database, "collections": restored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["dump", "restore"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--user", required=True)
    parser.add_argument("--db", default="admin", help="the user's authentication database")
    parser.add_argument("--database", required=True, help="the database to back up / restore")
    parser.add_argument("--out")
    parser.add_argument("--from", dest="source")
    args = parser.parse_args()
    password = sys.stdin.readline().rstrip("\n")
    if args.command == "dump":
        if not args.out:
            parser.error("dump needs --out")
        result = dump(args, password)
    else:
        if not args.source:
            parser.error("restore needs --from")
        result = restore(args, password)
    print(json.dumps(result))
    sys.stdout.flush()
    # pymongo's monitor threads are joined at a normal exit (half a second): not needed here.
    os._exit(0)


if __name__ == "__main__":
    main()
