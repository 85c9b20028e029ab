"""The gateway's input validation: every failure is an ApiError with an exact status, code and field."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from squall.core.events import Item, RequestSubmitted, request_submitted_json
from squall.core.http import ApiError
from squall.gateway.validation import (
    INT64_MAX,
    INT64_MIN,
    MAX_JSON_DEPTH,
    check_json_content_type,
    legacy_document,
    legacy_lookup,
    parse_json,
    parse_legacy_submission,
    parse_rid,
    parse_submission,
    parse_task_id,
)

KNOWN = ("sum", "mul", "square")
MAX_ITEMS = 5
MAX_RID = 16


def submit(doc: Any) -> Any:
    return parse_submission(doc, KNOWN, MAX_ITEMS, MAX_RID)


def legacy(doc: Any) -> Any:
    return parse_legacy_submission(doc, KNOWN, MAX_ITEMS, MAX_RID)


def error_of(call: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args)
    return info.value


def body(**fields: Any) -> dict[str, Any]:
    return {"items": [{"number": 1, "job": "sum"}], **fields}


# --- parse_submission: the happy path -----------------------------------------------------------------


def test_valid_submission() -> None:
    sub = submit({"rid": "order-1", "items": [{"number": 3, "job": "sum"}, {"number": -7, "job": "mul"}]})
    assert sub.rid == "order-1"
    assert sub.rid_is_int is False
    assert sub.items == [{"number": 3, "job": "sum"}, {"number": -7, "job": "mul"}]


def test_integer_rid_is_kept_as_decimal_text() -> None:
    sub = submit(body(rid=42))
    assert (sub.rid, sub.rid_is_int) == ("42", True)


@pytest.mark.parametrize("rid", [INT64_MIN, -1, 0, INT64_MAX])
def test_integer_rid_bounds_accepted(rid: int) -> None:
    sub = submit(body(rid=rid))
    assert (sub.rid, sub.rid_is_int) == (str(rid), True)


@pytest.mark.parametrize("rid", ["a", "A1", "9", "x.y_z:w@v-u", "a" * MAX_RID])
def test_string_rid_accepted(rid: str) -> None:
    sub = submit(body(rid=rid))
    assert (sub.rid, sub.rid_is_int) == (rid, False)


@pytest.mark.parametrize("doc", [body(), body(rid=None)])
def test_absent_rid_is_assigned_a_uuid(doc: dict[str, Any]) -> None:
    first, second = submit(doc), submit(doc)
    assert first.rid_is_int is False
    assert str(uuid.UUID(first.rid)) == first.rid
    assert first.rid != second.rid


def test_limits_are_inclusive() -> None:
    sub = submit({"items": [{"number": i, "job": "square"} for i in range(MAX_ITEMS)]})
    assert [item["number"] for item in sub.items] == list(range(MAX_ITEMS))


@pytest.mark.parametrize("number", [INT64_MIN, INT64_MAX, 0])
def test_int64_bounds_of_number_accepted(number: int) -> None:
    assert submit({"items": [{"number": number, "job": "sum"}]}).items[0]["number"] == number


# --- parse_submission: rid errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rid", "status", "code"),
    [
        (True, 422, "invalid_type"),
        (False, 422, "invalid_type"),
        (1.5, 422, "invalid_type"),
        ([1], 422, "invalid_type"),
        ({"a": 1}, 422, "invalid_type"),
        ("", 422, "invalid_rid"),
        ("a" * (MAX_RID + 1), 422, "invalid_rid"),
        ("has space", 422, "invalid_rid"),
        ("-leading-dash", 422, "invalid_rid"),
        (".leading-dot", 422, "invalid_rid"),
        ("slash/inside", 422, "invalid_rid"),
        ("tab\tinside", 422, "invalid_rid"),
        ("ünïcode", 422, "invalid_rid"),
        (INT64_MAX + 1, 422, "out_of_range"),
        (INT64_MIN - 1, 422, "out_of_range"),
    ],
)
def test_bad_rid(rid: Any, status: int, code: str) -> None:
    err = error_of(submit, body(rid=rid))
    assert (err.status, err.code, err.field) == (status, code, "rid")


def test_rid_with_trailing_newline_is_rejected() -> None:
    # RID_PATTERN ends in ``$``, which also matches just before a final newline; a rid must not end in one.
    err = error_of(submit, body(rid="abc\n"))
    assert (err.status, err.code, err.field) == (422, "invalid_rid", "rid")


def test_parse_rid_directly() -> None:
    assert parse_rid(7, MAX_RID) == ("7", True)
    assert parse_rid("r-1", MAX_RID) == ("r-1", False)
    err = error_of(parse_rid, True, MAX_RID, "numbers.rid")
    assert (err.status, err.code, err.field) == (422, "invalid_type", "numbers.rid")


# --- parse_submission: body and items errors --------------------------------------------------------------


@pytest.mark.parametrize("doc", [[], "text", 3, None, True])
def test_body_must_be_an_object(doc: Any) -> None:
    err = error_of(submit, doc)
    assert (err.status, err.code, err.field) == (422, "invalid_type", "body")


def test_items_missing() -> None:
    err = error_of(submit, {"rid": 1})
    assert (err.status, err.code, err.field) == (422, "missing_field", "items")


@pytest.mark.parametrize("items", [{"number": 1, "job": "sum"}, "sum", 1, None])
def test_items_not_a_list(items: Any) -> None:
    err = error_of(submit, {"items": items})
    assert (err.status, err.code, err.field) == (422, "invalid_type", "items")


def test_items_empty() -> None:
    err = error_of(submit, {"items": []})
    assert (err.status, err.code, err.field) == (422, "empty", "items")


def test_too_many_items() -> None:
    err = error_of(submit, {"items": [{"number": 1, "job": "sum"}] * (MAX_ITEMS + 1)})
    assert (err.status, err.code, err.field) == (413, "too_many_items", "items")
    assert str(MAX_ITEMS) in err.message


@pytest.mark.parametrize("item", [1, "x", [1, "sum"], None])
def test_item_not_an_object(item: Any) -> None:
    err = error_of(submit, {"items": [{"number": 1, "job": "sum"}, item]})
    assert (err.status, err.code, err.field) == (422, "invalid_type", "items[1]")


def test_unknown_field_in_body() -> None:
    err = error_of(submit, body(color="red"))
    assert (err.status, err.code, err.field) == (422, "unknown_field", "color")
    assert "'color'" in err.message


def test_unknown_field_named_is_the_first_in_order() -> None:
    err = error_of(submit, body(zeta=1, alpha=2))
    assert err.field == "alpha"


def test_unknown_field_is_checked_before_missing_items() -> None:
    err = error_of(submit, {"numbers": [1]})
    assert (err.status, err.code, err.field) == (422, "unknown_field", "numbers")


def test_unknown_field_name_is_truncated() -> None:
    err = error_of(submit, body(**{"x" * 500: 1}))
    assert err.field == "x" * 64
    assert len(err.message) < 200


def test_unknown_field_in_item() -> None:
    err = error_of(submit, {"items": [{"number": 1, "job": "sum", "color": "red"}]})
    assert (err.status, err.code, err.field) == (422, "unknown_field", "items[0].color")


@pytest.mark.parametrize("missing", ["number", "job"])
def test_missing_number_or_job(missing: str) -> None:
    item = {"number": 1, "job": "sum"}
    del item[missing]
    err = error_of(submit, {"items": [{"number": 2, "job": "mul"}, item]})
    assert (err.status, err.code, err.field) == (422, "missing_field", f"items[1].{missing}")


def test_integral_float_is_an_integer() -> None:
    # JSON Schema counts 540.0 as an integer; so does the API.
    sub = submit({"items": [{"number": 540.0, "job": "sum"}]})
    assert sub.items[0]["number"] == 540 and isinstance(sub.items[0]["number"], int)


@pytest.mark.parametrize("number", [True, False, 1.5, "1", None, [1], {"n": 1}])
def test_number_of_wrong_type(number: Any) -> None:
    err = error_of(submit, {"items": [{"number": 1, "job": "sum"}, {"number": number, "job": "sum"}]})
    assert (err.status, err.code, err.field) == (422, "invalid_type", "items[1].number")


@pytest.mark.parametrize("number", [INT64_MAX + 1, INT64_MIN - 1, 2**64, -(2**100)])
def test_number_out_of_int64_range(number: int) -> None:
    err = error_of(submit, {"items": [{"number": 1, "job": "sum"}, {"number": number, "job": "sum"}]})
    assert (err.status, err.code, err.field) == (422, "out_of_range", "items[1].number")


@pytest.mark.parametrize("literal", [str(INT64_MAX + 1), str(2**64 - 1)])
def test_number_out_of_range_from_the_wire(literal: str) -> None:
    doc = parse_json(f'{{"items": [{{"number": {literal}, "job": "sum"}}]}}'.encode())
    err = error_of(submit, doc)
    assert (err.status, err.code, err.field) == (422, "out_of_range", "items[0].number")


@pytest.mark.parametrize("literal", [str(2**64), str(INT64_MIN - 1), str(10**30)])
def test_number_beyond_64_bits_from_the_wire_is_out_of_range(literal: str) -> None:
    # orjson turns integers it cannot hold as int64/uint64 into floats; the client sent an integer anyway,
    # so the answer should be out_of_range ("must fit in a signed 64-bit integer"), not "must be an integer".
    doc = parse_json(f'{{"items": [{{"number": {literal}, "job": "sum"}}]}}'.encode())
    err = error_of(submit, doc)
    assert (err.status, err.code, err.field) == (422, "out_of_range", "items[0].number")


def test_unknown_job() -> None:
    err = error_of(submit, {"items": [{"number": 1, "job": "sum"}, {"number": 1, "job": "divide"}]})
    assert (err.status, err.code, err.field) == (422, "unknown_job", "items[1].job")
    assert "'divide'" in err.message
    assert "known: mul, square, sum" in err.message


def test_unknown_job_name_is_truncated_in_message() -> None:
    err = error_of(submit, {"items": [{"number": 1, "job": "j" * 1000}]})
    assert err.code == "unknown_job"
    assert "j" * 65 not in err.message


@pytest.mark.parametrize("job", [1, None, ["sum"], True])
def test_job_of_wrong_type(job: Any) -> None:
    err = error_of(submit, {"items": [{"number": 1, "job": job}]})
    assert (err.status, err.code, err.field) == (422, "invalid_type", "items[0].job")


def test_api_error_body() -> None:
    err = error_of(submit, {"items": []})
    assert err.body() == {"error": {"code": "empty", "message": err.message, "field": "items"}}
    assert err.headers == {}
    assert str(err) == err.message


# --- parse_legacy_submission ------------------------------------------------------------------------------


def test_legacy_pairs_numbers_with_jobs() -> None:
    sub = legacy({"rid": 12, "numbers": [1, 2, 3], "jobtodo": ["sum", "mul", "square"]})
    assert (sub.rid, sub.rid_is_int) == ("12", True)
    assert sub.items == [
        {"number": 1, "job": "sum"},
        {"number": 2, "job": "mul"},
        {"number": 3, "job": "square"},
    ]


def test_legacy_single_job_applies_to_every_number() -> None:
    sub = legacy({"rid": "r", "numbers": [4, 5, 6], "jobtodo": ["mul"]})
    assert sub.items == [
        {"number": 4, "job": "mul"},
        {"number": 5, "job": "mul"},
        {"number": 6, "job": "mul"},
    ]


def test_legacy_without_rid_gets_a_uuid() -> None:
    sub = legacy({"numbers": [1], "jobtodo": ["sum"]})
    assert uuid.UUID(sub.rid) and sub.rid_is_int is False


@pytest.mark.parametrize(("numbers", "jobs"), [([1, 2, 3], ["sum", "mul"]), ([1], ["sum", "mul"])])
def test_legacy_length_mismatch(numbers: list[int], jobs: list[str]) -> None:
    err = error_of(legacy, {"numbers": numbers, "jobtodo": jobs})
    assert (err.status, err.code, err.field) == (422, "length_mismatch", "jobtodo")


@pytest.mark.parametrize("missing", ["numbers", "jobtodo"])
def test_legacy_missing_field(missing: str) -> None:
    doc: dict[str, Any] = {"numbers": [1], "jobtodo": ["sum"]}
    del doc[missing]
    err = error_of(legacy, doc)
    assert (err.status, err.code, err.field) == (422, "missing_field", missing)


@pytest.mark.parametrize(
    ("doc", "status", "code", "field"),
    [
        ({"numbers": [1, "2"], "jobtodo": ["sum"]}, 422, "invalid_type", "numbers[1]"),
        ({"numbers": [1, 2**63], "jobtodo": ["sum"]}, 422, "out_of_range", "numbers[1]"),
        ({"numbers": [1], "jobtodo": ["nope"]}, 422, "unknown_job", "jobtodo[0]"),
        ({"numbers": [], "jobtodo": ["sum"]}, 422, "empty", "numbers"),
        ({"numbers": [1], "jobtodo": "sum"}, 422, "invalid_type", "jobtodo"),
        ({"numbers": list(range(MAX_ITEMS + 1)), "jobtodo": ["sum"]}, 413, "too_many_items", "numbers"),
        ({"numbers": [1], "jobtodo": ["sum"], "rid": True}, 422, "invalid_type", "rid"),
        ([1], 422, "invalid_type", "body"),
    ],
)
def test_legacy_errors(doc: Any, status: int, code: str, field: str) -> None:
    err = error_of(legacy, doc)
    assert (err.status, err.code, err.field) == (status, code, field)


# --- parse_json ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"   ", b"\n\t"])
def test_parse_json_empty_body(raw: bytes) -> None:
    err = error_of(parse_json, raw)
    assert (err.status, err.code, err.field) == (400, "invalid_json", "body")


@pytest.mark.parametrize("raw", [b"{", b"{'a': 1}", b"[1,]", b"NaN", b"\xff\xfe", b'{"a": 1} trailing'])
def test_parse_json_malformed(raw: bytes) -> None:
    err = error_of(parse_json, raw)
    assert (err.status, err.code, err.field) == (400, "invalid_json", "body")
    assert err.message.startswith("the body is not valid JSON")


def test_parse_json_valid() -> None:
    assert parse_json(b' {"a": [1, {"b": null}]} ') == {"a": [1, {"b": None}]}


def test_parse_json_at_max_depth() -> None:
    raw = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(raw) is not None


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100, 1000])
def test_parse_json_too_deep_arrays(depth: int) -> None:
    err = error_of(parse_json, b"[" * depth + b"]" * depth)
    assert (err.status, err.code, err.field) == (400, "too_deep", "body")


def test_parse_json_too_deep_objects() -> None:
    depth = MAX_JSON_DEPTH + 1
    err = error_of(parse_json, b'{"a":' * depth + b"1" + b"}" * depth)
    assert (err.status, err.code, err.field) == (400, "too_deep", "body")


def test_parse_json_beyond_orjson_recursion_limit() -> None:
    err = error_of(parse_json, b"[" * 5000 + b"]" * 5000)
    assert err.status == 400
    assert err.code in ("invalid_json", "too_deep")


# --- check_json_content_type ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "  application/json  ",
        "application/problem+json",
        "application/vnd.api+json; charset=utf-8",
    ],
)
def test_json_content_types_accepted(content_type: str | None) -> None:
    check_json_content_type(content_type)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "text/plain+json",
    ],
)
def test_other_content_types_rejected(content_type: str) -> None:
    err = error_of(check_json_content_type, content_type)
    assert (err.status, err.code, err.field) == (415, "unsupported_media_type", "Content-Type")


# --- legacy_document and legacy_lookup ---------------------------------------------------------------


def test_lookup_from_query_uses_last_value() -> None:
    found = legacy_lookup(b"", {"rid": [b"first", b"last"], "other": [b"x"]})
    assert found == {"rid": "last"}


def test_lookup_from_query_task_id() -> None:
    task_id = str(uuid.uuid4())
    assert legacy_lookup(b"", {"task_id": [task_id.encode()]}) == {"task_id": task_id}


def test_lookup_from_query_undecodable_bytes_are_replaced() -> None:
    assert legacy_lookup(b"", {"rid": [b"a\xffb"]}) == {"rid": "a\ufffdb"}


def test_lookup_from_json_body() -> None:
    assert legacy_lookup(b'{"rid": 17, "other": 1}', {}) == {"rid": 17}


def test_lookup_body_wins_over_query() -> None:
    found = legacy_lookup(b'{"rid": "body"}', {"rid": [b"query"], "task_id": [b"t"]})
    assert found == {"rid": "body", "task_id": "t"}


def test_lookup_from_form_body() -> None:
    task_id = str(uuid.uuid4())
    assert legacy_lookup(f"task_id={task_id}&rid=a%40b&x=1".encode(), {}) == {
        "task_id": task_id,
        "rid": "a@b",
    }


def test_lookup_from_the_originals_post_answer_sent_back() -> None:
    """The original's POST body: {"task_id": …} as JSON text, encoded again as a JSON string."""
    task_id = str(uuid.uuid4())
    sent_back = json.dumps(json.dumps({"task_id": task_id})).encode()
    assert legacy_lookup(sent_back, {}) == {"task_id": task_id}


@pytest.mark.parametrize("body", [b"", b"  ", b'{"other": 1}', b"x=1", b'"{}"'])
def test_lookup_with_neither_key_is_the_originals_400(body: bytes) -> None:
    err = error_of(legacy_lookup, body, {"rid": []})
    assert (err.status, err.code, err.field) == (400, "missing_field", "task_id")
    assert err.message.startswith("Wrong get request")


def test_lookup_task_id_must_be_text() -> None:
    err = error_of(legacy_lookup, b'{"task_id": 5}', {})
    assert (err.status, err.code, err.field) == (422, "invalid_type", "task_id")


@pytest.mark.parametrize(
    ("body", "doc"),
    [
        (b'{"rid": 1, "numbers": [4, 9], "jobtodo": ["sum", "mul"]}', None),
        (json.dumps(json.dumps({"rid": 1, "numbers": [4, 9], "jobtodo": ["sum", "mul"]})).encode(), None),
        (b"rid=1&numbers=4&numbers=9&jobtodo=sum&jobtodo=mul", {"rid": "1"}),
    ],
)
def test_legacy_document_reads_json_a_json_string_or_a_form(body: bytes, doc: dict[str, Any] | None) -> None:
    expected = {"rid": 1, "numbers": [4, 9], "jobtodo": ["sum", "mul"], **(doc or {})}
    assert legacy_document(body) == expected


def test_legacy_form_keeps_what_is_not_a_number_as_text() -> None:
    doc = legacy_document(b"numbers=12&numbers=x&numbers=-3&jobtodo=sum&numbers=" + b"9" * 41)
    assert doc == {"numbers": [12, "x", -3, "9" * 41], "jobtodo": ["sum"]}
    err = error_of(legacy, doc)
    assert (err.status, err.code, err.field) == (422, "invalid_type", "numbers[1]")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "invalid_json"),
        (b"{nope", 400, "invalid_json"),
        (b"just words", 400, "invalid_json"),
        (b"--x\r\nContent-Disposition: form-data\r\n\r\nr\r\n--x--", 400, "invalid_json"),
        (b"\xff\xfe=1", 400, "invalid_json"),
        (b'"{nope"', 400, "invalid_json"),
        (b"[1]", 422, "invalid_type"),
        (b'"[1]"', 422, "invalid_type"),
        (b"[" * 40 + b"]" * 40, 400, "too_deep"),
    ],
)
def test_legacy_document_refuses_what_is_neither(body: bytes, status: int, code: str) -> None:
    err = error_of(legacy_document, body)
    assert (err.status, err.code, err.field) == (status, code, "body")


# --- parse_task_id ---------------------------------------------------------------------------------------


def test_parse_task_id() -> None:
    task_id = uuid.uuid4()
    assert parse_task_id(str(task_id)) == task_id
    assert parse_task_id("not-a-uuid") is None
    assert parse_task_id(None) is None  # type: ignore[arg-type]


def test_rid_beyond_64_bits_from_the_wire() -> None:
    doc = parse_json(b'{"rid": 18446744073709551616, "items": [{"number": 1, "job": "sum"}]}')
    err = error_of(submit, doc)
    assert (err.status, err.code, err.field) == (422, "out_of_range", "rid")


@pytest.mark.parametrize(
    "items",
    [
        [
            {"number": 1, "job": "sum"},
            {"job": "mul", "number": -(2**63)},
            {"number": 2**63 - 1, "job": "square"},
        ],
        [{"number": 540.0, "job": "sum"}, {"number": 3, "job": "mul"}],  # a whole float: the careful path
    ],
)
def test_well_formed_items_parse_as_the_model_would(items: list[dict[str, Any]]) -> None:
    sub = parse_submission({"items": items}, KNOWN, 100, 128)
    expected = [Item(number=int(i["number"]), job=i["job"]) for i in items]
    assert sub.items == [i.model_dump() for i in expected]
    # The event built from them is the one the model describes.
    task_id = uuid.uuid4()
    payload = request_submitted_json(task_id, "r-1", sub.items)
    assert RequestSubmitted.model_validate_json(payload) == RequestSubmitted(
        task_id=task_id, rid="r-1", items=expected
    )


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"number": True, "job": "sum"}, "items[1].number"),
        ({"number": 2**63, "job": "sum"}, "items[1].number"),
        ({"number": 1, "job": "nope"}, "items[1].job"),
        ({"number": 1, "jobs": "sum"}, "items[1].jobs"),
        ({"number": 1}, "items[1].job"),
        ([1, "sum"], "items[1]"),
    ],
)
def test_one_bad_item_among_good_ones_is_named(entry: Any, field: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_submission({"items": [{"number": 1, "job": "sum"}, entry]}, KNOWN, 100, 128)
    assert caught.value.field == field and caught.value.status == 422


def test_a_scalar_counts_as_a_level_of_nesting() -> None:
    """The boundary stays where it was: objects nested ``MAX_JSON_DEPTH - 1`` deep around a number pass,
    one more is refused (the number is the last level)."""
    fits = MAX_JSON_DEPTH - 1
    assert parse_json(b'{"a":' * fits + b"1" + b"}" * fits) is not None
    deeper = MAX_JSON_DEPTH
    err = error_of(parse_json, b'{"a":' * deeper + b"1" + b"}" * deeper)
    assert (err.status, err.code) == (400, "too_deep")
    mixed = (
        b'{"items": [' + b"[" * (MAX_JSON_DEPTH - 3) + b"7" + b"]" * (MAX_JSON_DEPTH - 3) + b', {"a": []}]}'
    )
    assert parse_json(mixed) is not None  # exactly MAX_JSON_DEPTH levels, beside a shallower branch
