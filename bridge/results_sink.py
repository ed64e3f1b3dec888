"""MongoDB adapter for command results: the commands they answer, and their one insert.

The bridge writes only ``command_results`` here (its own collection); it reads the api's
``commands`` to learn each command's device and deadline. Those never change once a
command exists, so what was found is cached (bounded); an id not found is asked again
next time (a forged id costs one indexed read per batch, never a write).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bridge import command_results as cr
from bridge.decode import Accepted, Rejection
from bridge.mongo_sink import mapped
from outpost.store import Store
from schemas.documents import COMMAND_RESULTS, COMMANDS
from schemas.protocol import RejectReason

__all__ = ["ResultCounts", "ResultsSink"]


@dataclass
class ResultCounts:
    stored: list[tuple[str, str]] = field(default_factory=list)  # (command, status)
    duplicates: int = 0
    rejections: list[Rejection] = field(default_factory=list)


class ResultsSink:
    def __init__(self, store: Store, *, capacity: int = 100_000) -> None:
        self._store = store
        self._capacity = capacity
        self._facts: dict[str, cr.CommandFacts] = {}

    async def commands(self, ids: set[str]) -> dict[str, cr.CommandFacts]:
        wanted = sorted(ids - self._facts.keys())
        if wanted:
            projection = {"device_id": 1, "tenant_id": 1, "name": 1, "expires_at": 1}
            found = await mapped(self._store.find_ids(COMMANDS, wanted, projection))
            if len(self._facts) + len(found) > self._capacity:
                self._facts.clear()
            self._facts.update((str(d["_id"]), cr.CommandFacts.from_doc(d)) for d in found)
        return {i: self._facts[i] for i in ids if i in self._facts}

    async def write(self, items: Sequence[Accepted]) -> ResultCounts:
        """Judge and insert a batch of results; raises the bridge's store errors."""
        commands = await self.commands({cr.command_id(i) for i in items})
        judged = cr.judge_all(items, commands)
        counts = ResultCounts(duplicates=judged.duplicates, rejections=judged.rejections)
        if not judged.store:
            return counts
        ops = [cr.insert_op(item, command) for item, command in judged.store]
        applied = await mapped(self._store.apply(COMMAND_RESULTS, ops))
        dropped = set(applied.duplicates) | set(applied.errors)
        counts.duplicates += len(applied.duplicates)
        for index, error in applied.errors.items():
            inbound = judged.store[index][0].inbound
            counts.rejections.append(Rejection(inbound, RejectReason.STORE_REFUSED, error))
        kept = [pair for i, pair in enumerate(judged.store) if i not in dropped]
        counts.stored = cr.labels(kept)
        return counts
