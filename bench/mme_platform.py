"""What SageMaker does in front of a multi-model container, for the baseline: MMS loads nothing itself.

On a miss: POST /models (one load in flight per model); when the container is full, or answers 507,
DELETE the least recently used model and try again, until the load fits or nothing is left to unload
(a 507 can need several: loads in flight hold room too). A model is a hit if it was resident on arrival.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, OrderedDict
from collections.abc import Callable

from bench.loadgen import Connection


class PlatformEmulator:
    def __init__(self, capacity: int, url_of: Callable[[str], str]) -> None:
        self.capacity = capacity
        self.url_of = url_of
        self.resident: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.loading: dict[str, asyncio.Future[bool]] = {}
        self.hits = 0
        self.misses = 0
        # What each failed call answered ("POST /models 409", ...): the errors rows count, this names.
        self.failures: Counter[str] = Counter()

    async def invoke(self, conn: Connection, name: str, body: bytes) -> bool:
        if name in self.resident:
            self.hits += 1
            self.resident.move_to_end(name)
        else:
            self.misses += 1
            if not await self._ensure(conn, name):
                return False
        status, _ = await conn.request("POST", f"/models/{name}/invoke", body, {"Content-Type": "text/csv"})
        if status != 200:
            self.failures[f"invoke {status}"] += 1
        return status == 200

    async def _ensure(self, conn: Connection, name: str) -> bool:
        if name in self.loading:
            return await self.loading[name]
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.loading[name] = future
        try:
            ok = await self._load(conn, name)
        except OSError as exc:
            self.failures[f"POST /models {type(exc).__name__}"] += 1
            ok = False
        finally:
            del self.loading[name]
        future.set_result(ok)
        return ok

    async def _load(self, conn: Connection, name: str) -> bool:
        body = json.dumps({"model_name": name, "url": self.url_of(name)}).encode()
        headers = {"Content-Type": "application/json"}
        for _ in range(self.capacity + 1):  # each 507 unloads one model: bounded however others race
            while len(self.resident) + len(self.loading) > self.capacity and self.resident:
                await self._evict(conn)
            status, _ = await conn.request("POST", "/models", body, headers)
            if status == 200:
                self.resident[name] = None
                return True
            if status != 507:
                break
            if not self.resident:
                self.failures["POST /models 507 with nothing left to unload"] += 1
                return False
            await self._evict(conn)
        self.failures[f"POST /models {status}"] += 1
        return False

    async def _evict(self, conn: Connection) -> None:
        victim, _ = self.resident.popitem(last=False)
        await conn.request("DELETE", f"/models/{victim}")
