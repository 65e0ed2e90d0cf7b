"""Durable records of a cell: where each kind lives in the store and how it is encoded.

Values are the API's own protobuf messages (``Node``, ``Job``, ``Event``, ``LogBatch``), so
the store holds exactly what the API returns and needs no second schema. Keys::

    /infermesh/<cell>/nodes/<node id>
    /infermesh/<cell>/jobs/<job id>
    /infermesh/<cell>/events/<seq, 12 digits>
    /infermesh/<cell>/logs/<job id>/<seq, 12 digits>
    /infermesh/<cell>/meta/<name>

:class:`Records` writes them through the :class:`~infermesh.control.store.Store` and
keeps the event and log keys bounded.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.control.store import Store
from infermesh.core.errors import InferMeshError

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

MAX_EVENTS = 20_000
MAX_LOG_BATCHES_PER_JOB = 2_000


class CorruptRecord(InferMeshError):
    """A store value could not be decoded as the record its key names."""


class Records:
    """Typed access to one cell's keys in a store."""

    def __init__(self, store: Store, cell: str) -> None:
        self.store = store
        self.cell = cell
        self.root = f"/infermesh/{cell}/"
        self._event_seq = 0
        self.events: deque[pb.Event] = deque(maxlen=MAX_EVENTS)
        self._log_seq: dict[str, int] = {}

    def key(self, *parts: str) -> str:
        return self.root + "/".join(parts)

    @staticmethod
    def decode(message: type[M], key: str, value: bytes) -> M:
        record = message()
        try:
            record.ParseFromString(value)
        except DecodeError as error:
            raise CorruptRecord(
                f"store key {key} does not hold a {message.__name__} record ({error}); "
                "the store was written by something else: point the coordinator at its own "
                "--state-dir or --store"
            ) from None
        return record

    async def load(self, kind: str, message: type[M]) -> list[M]:
        items, _ = await self.store.range(self.key(kind) + "/")
        return [self.decode(message, kv.key, kv.value) for kv in items]

    async def put(self, kind: str, name: str, record: Message) -> None:
        await self.store.put(self.key(kind, name), record.SerializeToString(deterministic=True))

    async def delete(self, kind: str, name: str) -> None:
        await self.store.delete(self.key(kind, name))

    # -- events ----------------------------------------------------------------------------
    async def load_events(self) -> list[pb.Event]:
        events = await self.load("events", pb.Event)
        self._event_seq = max((e.seq for e in events), default=0)
        self.events.extend(events)
        return events

    async def append_event(self, event: pb.Event) -> pb.Event:
        self._event_seq += 1
        event.seq = self._event_seq
        event.ts = event.ts or time.time()
        await self.put("events", f"{event.seq:012d}", event)
        self.events.append(event)
        if event.seq > MAX_EVENTS and event.seq % 1000 == 0:
            await self._trim("events", event.seq - MAX_EVENTS)
        return event

    # -- logs ------------------------------------------------------------------------------
    async def load_logs(self, job_ids: Iterable[str]) -> dict[str, list[pb.LogLine]]:
        """The kept log lines of each job, read with one range over all logs."""
        out: dict[str, list[pb.LogLine]] = {job_id: [] for job_id in job_ids}
        for job_id in out:
            self._log_seq[job_id] = 0
        prefix = self.key("logs") + "/"
        items, _ = await self.store.range(prefix)
        for kv in items:
            job_id, _, seq = kv.key[len(prefix) :].rpartition("/")
            lines = out.get(job_id)
            if lines is None:
                continue  # logs of a job that is no longer in the table
            lines.extend(self.decode(pb.LogBatch, kv.key, kv.value).lines)
            self._log_seq[job_id] = max(self._log_seq[job_id], int(seq))
        return out

    async def append_logs(self, job_id: str, lines: list[pb.LogLine]) -> None:
        seq = self._log_seq.get(job_id, 0) + 1
        self._log_seq[job_id] = seq
        await self.put(f"logs/{job_id}", f"{seq:012d}", pb.LogBatch(lines=lines))
        if seq > MAX_LOG_BATCHES_PER_JOB and seq % 100 == 0:
            await self._trim(f"logs/{job_id}", seq - MAX_LOG_BATCHES_PER_JOB)

    async def _trim(self, kind: str, below: int) -> None:
        items, _ = await self.store.range(self.key(kind) + "/")
        for kv in items:
            if int(kv.key.rsplit("/", 1)[1]) <= below:
                await self.store.delete(kv.key)
