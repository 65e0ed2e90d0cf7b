"""The audit trail: one record per mutating call, appended to the store.

Keys: ``/infermesh/<cell>/audit/<seq, 12 digits>`` holding ``AuditRecord`` messages (who,
method, target, when, result). Calls that authentication or authorization refused are *not*
written (a refused caller must not be able to change the store, not even by filling the
audit log); they are logged and counted in ``infermesh_auth_denied_total`` instead.
The trail is bounded like events: beyond :data:`MAX_AUDIT` records the oldest are trimmed.
"""

from __future__ import annotations

import time
from collections import deque

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.control.records import Records

MAX_AUDIT = 50_000


class AuditLog:
    def __init__(self, records: Records) -> None:
        self.records = records
        self.seq = 0
        self.recent: deque[pb.AuditRecord] = deque(maxlen=MAX_AUDIT)

    async def load(self) -> None:
        items = await self.records.load("audit", pb.AuditRecord)
        self.recent.extend(items)
        self.seq = max((r.seq for r in items), default=0)

    async def append(self, record: pb.AuditRecord) -> pb.AuditRecord:
        self.seq += 1
        record.seq = self.seq
        record.ts = record.ts or time.time()
        await self.records.put("audit", f"{record.seq:012d}", record)
        self.recent.append(record)
        if record.seq > MAX_AUDIT and record.seq % 1000 == 0:
            await self.records._trim("audit", record.seq - MAX_AUDIT)
        return record

    def query(
        self, *, principal: str = "", method: str = "", since: float = 0.0, limit: int = 100
    ) -> list[pb.AuditRecord]:
        out = [
            r
            for r in self.recent
            if (not principal or r.principal == principal)
            and (not method or r.method == method)
            and r.ts >= since
        ]
        return out[-limit:] if limit > 0 else out
