"""The sweep for lost request events: re-publishes accepted requests whose event never reached a processor.

The gateway records an acceptance before it publishes the event; if it dies in between, only this sweep
brings the request to a processor.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core import events
from squall.core.store import recording

log = logging.getLogger("squall.processor")

SWEEP_INTERVAL_SECONDS = 15.0
SWEEP_MIN_AGE_SECONDS = 30.0
SWEEP_LIMIT = 500  # requests re-published per sweep at most


class LostEventSweep:
    """Finds accepted requests no processor recorded and publishes their events again."""

    def __init__(self, js: JetStreamContext, engine: AsyncEngine) -> None:
        self.js = js
        self.engine = engine

    async def republish_lost(self, older_than_seconds: float = SWEEP_MIN_AGE_SECONDS) -> int:
        """Re-publish accepted requests whose event never reached a processor (the gateway died between
        recording and publishing). Only when the request consumer has no backlog: then an unrecorded
        request older than the sweep age is one whose event is gone, not one still waiting in the queue."""
        info = await self.js.consumer_info(events.REQUESTS_STREAM, events.REQUESTS_CONSUMER)
        if info.num_pending or info.num_ack_pending:
            return 0
        lost = await recording.unrecorded_payloads(self.engine, older_than_seconds, limit=SWEEP_LIMIT)
        for rid, task_id, payload in lost:
            await self.js.publish(
                events.REQUEST_SUBMITTED,
                payload,
                headers={"Nats-Msg-Id": events.request_msg_id(rid, task_id)},
            )
        if lost:
            log.warning("re-published %d request event(s) that never reached a processor", len(lost))
        return len(lost)
