"""JSON encoding of answers and the ApiError shape."""

from __future__ import annotations

import json
import uuid

import asyncpg.exceptions

from squall.core.http import INTERNAL_ERROR, ApiError, json_bytes, known_failure


def test_json_bytes_plain_values() -> None:
    assert json_bytes({"a": [1, "x", None, True]}) == b'{"a":[1,"x",null,true]}'


def test_json_bytes_non_string_keys() -> None:
    assert json_bytes({1: "one"}) == b'{"1":"one"}'


def test_json_bytes_integers_beyond_64_bits() -> None:
    value = {"results": [2**64, -(2**70), 2**63 - 1, 3]}
    assert json.loads(json_bytes(value)) == value
    assert json_bytes({"n": 2**100}) == b'{"n":1267650600228229401496703205376}'


def test_json_bytes_big_integers_with_other_types() -> None:
    task_id = uuid.uuid4()
    assert json.loads(json_bytes({"task_id": task_id, "n": 2**80, 7: "k"})) == {
        "task_id": str(task_id),
        "n": 2**80,
        "7": "k",
    }


def test_api_error() -> None:
    err = ApiError(503, "unavailable", "retry later", None, {"Retry-After": "2"})
    assert (err.status, err.code, err.field, err.headers) == (503, "unavailable", None, {"Retry-After": "2"})
    assert err.body() == {"error": {"code": "unavailable", "message": "retry later", "field": None}}
    assert json.loads(json_bytes(err.body())) == err.body()


def test_known_failures_get_their_answer_and_bugs_none() -> None:
    refused = ApiError(422, "empty", "no items", "items")
    assert known_failure(refused) is refused
    unreachable = known_failure(ConnectionRefusedError("postgres down"))
    assert (
        unreachable is not None and unreachable.status == 503 and unreachable.headers == {"Retry-After": "2"}
    )
    assert known_failure(RuntimeError("a bug")) is None
    assert INTERNAL_ERROR.status == 500 and INTERNAL_ERROR.body()["error"]["code"] == "internal"


def test_asyncpg_errors_of_an_unreachable_database_are_503_and_its_refusals_bugs() -> None:
    """The hot statements run on asyncpg's connection (store.driver.fetch_on_driver) and raise its errors."""
    for unavailable in (
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
    ):
        answer = known_failure(unavailable)
        assert answer is not None and answer.status == 503, unavailable
    for bug in (
        asyncpg.exceptions.UndefinedColumnError('column "nope" does not exist'),
        asyncpg.exceptions.DataError("invalid input for query argument $1"),
    ):
        assert known_failure(bug) is None, bug
