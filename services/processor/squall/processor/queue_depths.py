"""Queue-depth sampling: what each JetStream consumer has pending and unacked, exported as gauges.

KEDA scales the processors on these gauges and the alerts watch them.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext

from squall.core import events, metrics

log = logging.getLogger("squall.processor")

# How often queue depths are sampled (one consumer-info request per consumer) and counts folded.
QUEUE_SAMPLE_SECONDS = 5.0

SAMPLED_CONSUMERS = (
    (events.REQUESTS_STREAM, events.REQUESTS_CONSUMER),
    (events.TASKS_STREAM, events.TASKS_CONSUMER),
)


class QueueDepthSampler:
    """Reads the depth of the processor's consumers and exports it."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.last_sample_worked = True  # so a failure is logged once, not at every sample

    async def sample_queues(self) -> bool:
        """Export what each consumer has pending and unacked. A failure leaves the last values and never
        disturbs consumption."""
        try:
            for stream, consumer in SAMPLED_CONSUMERS:
                info = await self.js.consumer_info(stream, consumer, timeout=2.0)
                metrics.QUEUE_PENDING.labels(consumer).set(info.num_pending or 0)
                metrics.QUEUE_ACK_PENDING.labels(consumer).set(info.num_ack_pending or 0)
        except Exception as exc:
            if self.last_sample_worked:
                log.warning("cannot read the queue depths: %r", exc)
            self.last_sample_worked = False
            return False
        self.last_sample_worked = True
        return True
