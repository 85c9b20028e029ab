"""One message of each type of the event contract, as a release writes them, and what a release reads
from them: run by this code in the test suite and by the previous release's own code in its virtual
environment, so that both directions of a rolling upgrade are checked (docs/design.md, "Releases and
upgrades").

    python event_contract.py write > events/<version>.json   # record what this code publishes
    python event_contract.py read < events/<version>.json    # what this code's consumers read from them

Standalone on purpose (it imports only ``squall.core.events`` and the standard library): the previous
release runs it as a file, without this tree on its path.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

from squall.core import events

TASK_IDS = [uuid.UUID(f"00000000-0000-4000-8000-00000000000{n}") for n in range(1, 5)]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
EDGE = 2**63 - 1


def written() -> list[dict[str, Any]]:
    """A request event alone (as the gateway publishes one request, and the processors' sweep re-publishes
    one), a group of them in one message, and a poll task."""
    single = events.request_submitted_json(
        TASK_IDS[0], "fixture-single", [{"number": 7, "job": "sum"}, {"number": -EDGE - 1, "job": "mul"}]
    )
    grouped = [
        (
            events.request_submitted_json(TASK_IDS[1], "fixture-grouped-1", [{"number": EDGE, "job": "sum"}]),
            None,
        ),
        (
            events.request_submitted_json(TASK_IDS[2], "fixture-grouped-2", [{"number": 0, "job": "square"}]),
            TRACEPARENT,
        ),
    ]
    poll = events.PollTask(task_id=TASK_IDS[3], processing="sum", batch_size=5000, tick_key="sum:1765152000")
    return [
        {
            "type": "request_submitted",
            "subject": events.REQUEST_SUBMITTED,
            "msg_id": events.request_msg_id("fixture-single", TASK_IDS[0]),
            "data": single.decode(),
        },
        {
            "type": "request_batch",
            "subject": events.REQUEST_SUBMITTED,
            "msg_id": None,  # a group's message is never published twice: no de-duplication id
            "data": events.request_batch_json(grouped).decode(),
        },
        {
            "type": "poll_task",
            "subject": events.poll_subject("sum"),
            "msg_id": poll.msg_id,
            "data": poll.model_dump_json(),
        },
    ]


def read(message: dict[str, Any]) -> Any:
    """What a processor makes of ``message``: the subject it consumes and the decoded content."""
    data = message["data"].encode()
    if message["subject"] == events.REQUEST_SUBMITTED:
        return [
            {
                "task_id": str(event.task_id),
                "rid": event.rid,
                "numbers": event.numbers,
                "jobs": event.jobs,
                "traceparent": traceparent,
            }
            for event, traceparent in events.read_request_events(data)
        ]
    if message["subject"].startswith(events.POLL_TASK_PREFIX + "."):
        return json.loads(events.PollTask.model_validate_json(data).model_dump_json())
    raise ValueError(f"no consumer reads the subject {message['subject']!r}")


def main(command: str) -> int:
    if command == "write":
        sys.stdout.write(json.dumps(written(), indent=2) + "\n")
        return 0
    if command == "read":
        sys.stdout.write(json.dumps([read(m) for m in json.load(sys.stdin)], indent=2) + "\n")
        return 0
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
