"""Steady load for the rehearsal: clients that follow the gateway they are pointed at and count answers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping

import httpx

JOBS = ("sum", "mul")  # sum runs immediate in the rehearsal, mul in batches


class RollingLoad:
    """HTTP clients submitting requests with their own rids, alternating the jobs, each retried with the same
    rid after a connection error or a 503 until accepted (a careful client during a rolling update).
    ``base_url`` may change while they run: the next submission goes there, as when a Service's endpoints
    change. ``accepted`` is what the gateways promised to process."""

    def __init__(self, base_url: str, items: int) -> None:
        self.base_url = base_url
        self.items = items
        self.accepted: dict[str, tuple[str, list[int]]] = {}  # rid -> (job, numbers)
        self.statuses: Counter[int] = Counter()
        self.connection_errors = 0
        self.unexpected: list[str] = []  # answers a client must never see; asserted empty
        self.running = False
        self._clients: list[asyncio.Task[None]] = []

    def start(self, phase: str, clients: int) -> None:
        self.running = True
        self._clients = [asyncio.create_task(self._client(phase, i)) for i in range(clients)]

    async def stop(self, timeout: float = 30.0) -> int:
        """Stop submitting; each client first finishes the request it has begun (until it is accepted). The
        clients still retrying after ``timeout`` are cancelled: their number (none, unless a gateway is
        gone for good)."""
        self.running = False
        clients, self._clients = self._clients, []
        if not clients:
            return 0
        done, retrying = await asyncio.wait(clients, timeout=timeout)
        for task in retrying:
            task.cancel()
        await asyncio.gather(*retrying, return_exceptions=True)
        for task in done:
            task.result()  # a client's own failure, if any
        return len(retrying)

    def accepted_of(self, job: str) -> int:
        return sum(1 for accepted_job, _ in self.accepted.values() if accepted_job == job)

    async def _client(self, phase: str, index: int) -> None:
        async with httpx.AsyncClient(timeout=15.0) as http:
            sequence = 0
            while self.running:
                rid = f"{phase}-c{index}-{sequence}"
                job = JOBS[sequence % len(JOBS)]
                numbers = [(index * 1_000_000 + sequence) * 100 + i for i in range(self.items)]
                body = {"rid": rid, "items": [{"number": n, "job": job} for n in numbers]}
                if await self._submit(http, rid, body):
                    self.accepted[rid] = (job, numbers)
                sequence += 1

    async def _submit(self, http: httpx.AsyncClient, rid: str, body: Mapping[str, object]) -> bool:
        """Whether the request was accepted; an answer other than those a client retries ends its tries."""
        while True:
            try:
                response = await http.post(f"{self.base_url}/v1/requests", json=body)
            except httpx.TransportError:
                self.connection_errors += 1  # a gateway that closed: retried, as any client would
                await asyncio.sleep(0.1)
                continue
            self.statuses[response.status_code] += 1
            if response.status_code in (200, 202):
                return True
            if response.status_code != 503 or "Retry-After" not in response.headers:
                self.unexpected.append(f"{rid}: {response.status_code} {response.text[:200]}")
                return False
            await asyncio.sleep(0.2)
