"""Input validation of the gateway: pure functions, every failure an ApiError naming the field."""

from __future__ import annotations

import base64
import datetime as dt
import re
import urllib.parse
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import orjson

from squall.core.events import ItemFields
from squall.core.http import ApiError
from squall.core.rules import (
    MAX_JSON_DEPTH,
    MAX_TASK_PAGE,
    NAME_MAX_LENGTH,
    RID_PATTERN,
    TASK_KINDS,
    TASK_STATES,
)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Submission:
    rid: str  # canonical key: an integer rid is kept as its decimal text
    rid_is_int: bool
    items: list[ItemFields]  # exactly {"number": int64, "job": known processing}, in order


SubmissionParser = Callable[[Any, Collection[str], int, int], Submission]


def check_json_content_type(content_type: str | None) -> None:
    """``application/json`` (any charset) or a ``+json`` type; a missing header is taken as JSON."""
    if not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json", "Content-Type")


def parse_json(body: bytes) -> Any:
    value = load_json(body)
    check_depth(value)
    return value


def load_json(body: bytes) -> Any:
    """The body as JSON, its depth not checked yet (:func:`check_depth`)."""
    if not body.strip():
        raise ApiError(400, "invalid_json", "the body is empty; send a JSON object", "body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc.msg}", "body") from None


def check_depth(value: Any) -> None:
    if _depth(value) > MAX_JSON_DEPTH:
        raise ApiError(400, "too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels", "body")


_CONTAINERS = (dict, list)  # a tuple: isinstance against it is faster than against dict | list


def _depth(value: Any) -> int:
    """Levels of nesting, a scalar counting as one (``[]`` is 1, ``[1]`` 2). Only containers are walked
    level by level: a 100-item submission's 200 scalars are looked at once, not carried to a level of
    their own. orjson itself refuses more than 1024 levels; this keeps well-formed but absurd documents
    out too."""
    if not isinstance(value, _CONTAINERS):
        return 1
    depth, level = 1, [value]
    while True:
        deeper: list[Any] = []
        scalars = False
        for container in level:
            for child in container.values() if isinstance(container, dict) else container:
                if isinstance(child, _CONTAINERS):
                    deeper.append(child)
                else:
                    scalars = True
        if not deeper:
            return depth + 1 if scalars else depth
        depth += 1
        if depth > MAX_JSON_DEPTH:
            return depth
        level = deeper


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_type", f"{field} must be a JSON object", field)
    return value


def _int64(value: Any, field: str) -> int:
    if isinstance(value, float) and value.is_integer():
        if abs(value) >= 2.0**63:
            # orjson reads integer literals beyond 64 bits as (rounded) floats: an integer that does not fit.
            raise ApiError(422, "out_of_range", f"{field} must fit in a signed 64-bit integer", field)
        value = int(value)  # 540.0 is an integer, as JSON Schema has it
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, "invalid_type", f"{field} must be an integer", field)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ApiError(422, "out_of_range", f"{field} must fit in a signed 64-bit integer", field)
    return value


def _job(value: Any, field: str, known: Collection[str]) -> str:
    if not isinstance(value, str):
        raise ApiError(422, "invalid_type", f"{field} must be a string", field)
    if value not in known:
        raise ApiError(
            422,
            "unknown_job",
            f"{field}: unknown processing {value[:64]!r}; known: {', '.join(sorted(known))}",
            field,
        )
    return value


def parse_rid(value: Any, max_length: int, field: str = "rid") -> tuple[str, bool]:
    """(canonical key, given as an integer). None → a new rid is assigned."""
    if value is None:
        return str(uuid.uuid4()), False
    if isinstance(value, bool):
        raise ApiError(422, "invalid_type", "rid must be an integer or a string", field)
    if isinstance(value, int | float):
        return str(_int64(value, field)), True
    if isinstance(value, str):
        if not value or len(value) > max_length:
            raise ApiError(422, "invalid_rid", f"rid must be 1 to {max_length} characters long", field)
        if not RID_PATTERN.fullmatch(value):
            raise ApiError(
                422,
                "invalid_rid",
                "rid may hold letters, digits and . _ : @ - (starting with a letter or digit)",
                field,
            )
        return value, False
    raise ApiError(422, "invalid_type", "rid must be an integer or a string", field)


def _count(values: Any, field: str, max_items: int) -> list[Any]:
    if not isinstance(values, list):
        raise ApiError(422, "invalid_type", f"{field} must be a JSON array", field)
    if not values:
        raise ApiError(422, "empty", f"{field} must hold at least one item", field)
    if len(values) > max_items:
        raise ApiError(
            413, "too_many_items", f"{field} holds {len(values)} items; the limit is {max_items}", field
        )
    return values


def _well_formed_items(raw_items: list[Any], known_jobs: Collection[str]) -> list[ItemFields] | None:
    """The items as they came, if every one is exactly ``{"number": <int64>, "job": <known>}``; else None,
    and the item-by-item checks below find the first fault and name it. The common case costs a third as
    much, and nothing is built: the parsed objects are the items."""
    for entry in raw_items:
        if type(entry) is not dict or len(entry) != 2:
            return None
        number, job = entry.get("number"), entry.get("job")
        if type(number) is not int or not INT64_MIN <= number <= INT64_MAX:
            return None
        if type(job) is not str or job not in known_jobs:
            return None
    return raw_items


def parse_submission(
    doc: Any, known_jobs: Collection[str], max_items: int, max_rid_length: int
) -> Submission:
    """``POST /v1/requests``: ``{"rid": int|string (optional), "items": [{"number": int, "job": str}]}``."""
    body = _object(doc, "body")
    unknown = set(body) - {"rid", "items"}
    if unknown:
        name = sorted(unknown)[0]
        raise ApiError(422, "unknown_field", f"unknown field {name[:64]!r}", name[:64])
    if "items" not in body:
        raise ApiError(422, "missing_field", "items is required", "items")
    rid, rid_is_int = parse_rid(body.get("rid"), max_rid_length)
    raw_items = _count(body["items"], "items", max_items)
    fast = _well_formed_items(raw_items, known_jobs)
    if fast is not None:
        return Submission(rid, rid_is_int, fast)
    items: list[ItemFields] = []
    for index, raw in enumerate(raw_items):
        field = f"items[{index}]"
        entry = _object(raw, field)
        extra = set(entry) - {"number", "job"}
        if extra:
            raise ApiError(
                422,
                "unknown_field",
                f"unknown field {sorted(extra)[0][:64]!r}",
                f"{field}.{sorted(extra)[0][:64]}",
            )
        for key in ("number", "job"):
            if key not in entry:
                raise ApiError(422, "missing_field", f"{field}.{key} is required", f"{field}.{key}")
        items.append(
            {
                "number": _int64(entry["number"], f"{field}.number"),
                "job": _job(entry["job"], f"{field}.job", known_jobs),
            }
        )
    return Submission(rid, rid_is_int, items)


def parse_legacy_submission(
    doc: Any, known_jobs: Collection[str], max_items: int, max_rid_length: int
) -> Submission:
    """The original ``POST /number_request``: ``{"rid", "numbers": [int], "jobtodo": [str]}``.

    ``jobtodo`` pairs with ``numbers`` (the i-th number goes to the i-th job), or holds one job for all.
    """
    body = _object(doc, "body")
    for key in ("numbers", "jobtodo"):
        if key not in body:
            raise ApiError(422, "missing_field", f"{key} is required", key)
    rid, rid_is_int = parse_rid(body.get("rid"), max_rid_length)
    numbers = [
        _int64(n, f"numbers[{i}]") for i, n in enumerate(_count(body["numbers"], "numbers", max_items))
    ]
    jobs = [
        _job(j, f"jobtodo[{i}]", known_jobs)
        for i, j in enumerate(_count(body["jobtodo"], "jobtodo", max_items))
    ]
    if len(jobs) == 1:
        jobs = jobs * len(numbers)
    if len(jobs) != len(numbers):
        raise ApiError(422, "length_mismatch", "jobtodo must hold one job, or one job per number", "jobtodo")
    return Submission(rid, rid_is_int, [{"number": n, "job": j} for n, j in zip(numbers, jobs, strict=True)])


def parse_task_id(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


LEGACY_LOOKUP_KEYS = ("task_id", "rid")
_LEGACY_LIST_FIELDS = frozenset(("numbers", "jobtodo"))
_DECIMAL = re.compile(r"[+-]?[0-9]{1,40}")


def legacy_document(body: bytes) -> dict[str, Any]:
    """A ``/number_request`` body as the original's clients send it, whatever its ``Content-Type`` claims:
    a JSON object; a JSON string holding one (the original answered its POST so, and its main script sends
    that answer back as it is); or a form, as the ``requests`` library encodes a dict body (a list as
    repeated keys, a number as decimal text). Anything else is a 400 naming the body."""
    if not body.strip():
        raise ApiError(400, "invalid_json", "the body is empty; send a JSON object", "body")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        form = _legacy_form(body)
        if form is None:
            raise ApiError(
                400, "invalid_json", f"the body is neither JSON nor a form: {exc.msg}", "body"
            ) from None
        return form
    if isinstance(doc, str):
        try:
            doc = orjson.loads(doc)
        except orjson.JSONDecodeError as exc:
            raise ApiError(
                400, "invalid_json", f"the body is a JSON string that does not hold JSON: {exc.msg}", "body"
            ) from None
    check_depth(doc)
    return _object(doc, "body")


def _legacy_form(body: bytes) -> dict[str, Any] | None:
    """``task_id=…&rid=…`` or ``rid=…&numbers=4&numbers=9&jobtodo=sum&jobtodo=mul``; None if not a form."""
    try:
        pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return None
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key == "numbers":
            # Decimal text is a number; anything else stays text, refused by the submission's checks.
            doc.setdefault(key, []).append(int(value) if _DECIMAL.fullmatch(value) else value)
        elif key in _LEGACY_LIST_FIELDS:
            doc.setdefault(key, []).append(value)
        else:
            doc[key] = value
    return doc


def legacy_lookup(body: bytes, query: dict[str, list[bytes]]) -> dict[str, Any]:
    """``GET /number_request`` finds ``task_id`` or ``rid`` in the body (:func:`legacy_document`) or the
    query. Neither is a 400, as the original answered ("Wrong get request"), with an error naming the
    field."""
    found: dict[str, Any] = {
        key: values[-1].decode(errors="replace")
        for key, values in query.items()
        if key in LEGACY_LOOKUP_KEYS and values
    }
    if body.strip():
        doc = legacy_document(body)
        found.update((key, doc[key]) for key in LEGACY_LOOKUP_KEYS if key in doc)
    if not found:
        raise ApiError(
            400,
            "missing_field",
            "Wrong get request: give task_id or rid (JSON body, form field or query)",
            "task_id",
        )
    if "task_id" in found and not isinstance(found["task_id"], str):
        raise ApiError(422, "invalid_type", "task_id must be a string", "task_id")
    return found


TASK_QUERY_FIELDS = ("state", "kind", "processing", "limit", "cursor")


@dataclass(frozen=True)
class TaskQuery:
    state: str | None
    kind: str | None
    processing: str | None
    limit: int
    after: tuple[dt.datetime, uuid.UUID] | None


def parse_task_query(args: dict[str, str]) -> TaskQuery:
    """The query of ``GET /v1/tasks``; unknown parameters and bad values are a 422 naming them."""
    for name in args:
        if name not in TASK_QUERY_FIELDS:
            raise ApiError(422, "unknown_field", f"unknown query parameter {name[:64]!r}", name[:64])
    state, kind = args.get("state"), args.get("kind")
    if state is not None and state not in TASK_STATES:
        raise ApiError(422, "invalid_value", f"state must be one of {', '.join(TASK_STATES)}", "state")
    if kind is not None and kind not in TASK_KINDS:
        raise ApiError(422, "invalid_value", f"kind must be one of {', '.join(TASK_KINDS)}", "kind")
    processing = args.get("processing")
    if processing is not None and len(processing) > NAME_MAX_LENGTH:
        raise ApiError(
            422, "invalid_value", f"processing is at most {NAME_MAX_LENGTH} characters", "processing"
        )
    try:
        limit = int(args.get("limit", "50"))
    except ValueError:
        raise ApiError(422, "invalid_type", "limit must be an integer", "limit") from None
    if not 1 <= limit <= MAX_TASK_PAGE:
        raise ApiError(422, "out_of_range", f"limit must be between 1 and {MAX_TASK_PAGE}", "limit")
    return TaskQuery(state, kind, processing, limit, decode_cursor(args.get("cursor")))


def encode_cursor(position: tuple[dt.datetime, uuid.UUID] | None) -> str | None:
    if position is None:
        return None
    raw = f"{position[0].isoformat()}|{position[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[dt.datetime, uuid.UUID] | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, task_id = raw.partition("|")
        parsed = dt.datetime.fromisoformat(moment)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        return parsed, uuid.UUID(task_id)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "invalid_value", "cursor is not one this API gave", "cursor") from None
