"""A small async etcd v3 client over the JSON gateway (etcd >= 3.4: /v3/...), using httpx."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)

_UNAUTHENTICATED = 16


class EtcdError(Exception):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    pass


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


def prefix_end(prefix: str) -> str:
    """The range_end that selects every key starting with prefix."""
    raw = bytearray(prefix.encode())
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return _b64(bytes(raw[: i + 1]))
    return _b64(b"\0")


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    lease: int
    create_revision: int


def _kv(item: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(item.get("key", "")),
        value=_unb64(item.get("value", "")),
        lease=int(item.get("lease", 0)),
        create_revision=int(item.get("create_revision", 0)),
    )


class EtcdClient:
    """Tries the endpoints in turn; authenticates (and re-authenticates) when a user is given."""

    def __init__(
        self,
        endpoints: tuple[str, ...] | list[str],
        user: str | None = None,
        password: str | None = None,
        timeout: float = 3.0,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self._endpoints = list(endpoints)
        self._current = 0
        self._user = user
        self._password = password
        self._token: str | None = None
        self._http = httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _raw(self, path: str, body: dict[str, Any], auth: bool = True) -> dict[str, Any]:
        last: Exception | None = None
        for i in range(len(self._endpoints)):
            index = (self._current + i) % len(self._endpoints)
            url = self._endpoints[index] + path
            headers = {"Authorization": self._token} if auth and self._token else {}
            try:
                resp = await self._http.post(url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                last = exc
                continue
            self._current = index
            try:
                data: dict[str, Any] = resp.json()
            except ValueError:
                raise EtcdError(f"{path}: HTTP {resp.status_code}: {resp.text[:200]}") from None
            if "error" in data or resp.status_code >= 400:
                raise EtcdError(
                    f"{path}: {data.get('message') or data.get('error') or resp.status_code}",
                    code=data.get("code"),
                )
            return data
        raise EtcdUnavailable(f"no etcd endpoint reachable ({', '.join(self._endpoints)}): {last}")

    async def authenticate(self) -> None:
        if not self._user:
            return
        data = await self._raw(
            "/v3/auth/authenticate", {"name": self._user, "password": self._password}, auth=False
        )
        self._token = data["token"]

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._user and self._token is None:
            await self.authenticate()
        try:
            return await self._raw(path, body)
        except EtcdError as exc:
            if exc.code == _UNAUTHENTICATED and self._user:
                await self.authenticate()  # token expired or the member restarted
                return await self._raw(path, body)
            raise

    # -- leases ---------------------------------------------------------------------------
    async def grant(self, ttl: int) -> int:
        data = await self.call("/v3/lease/grant", {"TTL": ttl})
        return int(data["ID"])

    async def keepalive(self, lease: int) -> int:
        """Refresh a lease once; returns the remaining TTL (0 when the lease no longer exists)."""
        data = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(data.get("result", data).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    # -- keys -----------------------------------------------------------------------------
    async def put(self, key: str, value: str, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        await self.call("/v3/kv/put", body)

    async def get(self, key: str) -> KeyValue | None:
        data = await self.call("/v3/kv/range", {"key": _b64(key)})
        kvs = data.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        data = await self.call(
            "/v3/kv/range", {"key": _b64(prefix), "range_end": prefix_end(prefix)}
        )
        return [_kv(item) for item in data.get("kvs") or []]

    async def delete(self, key: str) -> None:
        await self.call("/v3/kv/deleterange", {"key": _b64(key)})

    async def create(self, key: str, value: str, lease: int) -> tuple[bool, KeyValue | None]:
        """Put key only if it does not exist. Returns (created, current holder when not)."""
        data = await self.call(
            "/v3/kv/txn",
            {
                "compare": [
                    {
                        "key": _b64(key),
                        "result": "EQUAL",
                        "target": "CREATE",
                        "create_revision": "0",
                    }
                ],
                "success": [
                    {"request_put": {"key": _b64(key), "value": _b64(value), "lease": str(lease)}}
                ],
                "failure": [{"request_range": {"key": _b64(key)}}],
            },
        )
        if data.get("succeeded"):
            return True, None
        for response in data.get("responses") or []:
            kvs = response.get("response_range", {}).get("kvs") or []
            if kvs:
                return False, _kv(kvs[0])
        return False, None
