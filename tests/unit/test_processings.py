"""Processings: running functions and commands on a batch, failures, timeouts, and the registry."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from squall.core.processings import (
    ItemFailed,
    PermanentError,
    Processing,
    ProcessingError,
    Registry,
    load_registry,
    processing,
)
from squall.core.settings import load_settings
from tests.unit.processes import read_text, wait_gone

SAMPLE = "tests.unit.sample_processings"
BUILTIN_NAMES = {"sum", "mul", "square"}


def command(code: str, *, timeout: float = 10.0, name: str = "cmd") -> Processing:
    return Processing(name=name, command=(sys.executable, "-c", code), timeout_seconds=timeout)


async def read_pid(path: Path, seconds: float = 5.0) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = read_text(path)
        if text.strip():
            return int(text)
        await asyncio.sleep(0.02)
    raise AssertionError(f"no pid written to {path}")


# --- construction ----------------------------------------------------------------------------------------


def _noop(numbers: list[int]) -> list[int]:
    return numbers


@pytest.mark.parametrize("name", ["a", "sum", "my_proc_2", "a" * 63])
def test_valid_names(name: str) -> None:
    assert Processing(name=name, function=_noop).name == name


@pytest.mark.parametrize(
    "name", ["", "Sum", "1abc", "_x", "with-dash", "with space", "dotted.name", "a" * 64, "é"]
)
def test_invalid_names_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        Processing(name=name, function=_noop)


def test_name_with_trailing_newline_rejected() -> None:
    # NAME_PATTERN ends in ``$``, which also matches just before a final newline.
    with pytest.raises(ValueError, match="must match"):
        Processing(name="sum\n", function=_noop)


def test_needs_exactly_one_of_function_or_command() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Processing(name="x")
    with pytest.raises(ValueError, match="exactly one"):
        Processing(name="x", function=_noop, command=("true",))


@pytest.mark.parametrize(
    "changes",
    [
        {"mode": "eventually"},
        {"batch_size": 0},
        {"timeout_seconds": 0},
        {"timeout_seconds": -1.0},
        {"max_attempts": 0},
        {"claim": "grab"},
    ],
)
def test_bad_parameters_rejected(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="'x'"):
        Processing(name="x", function=_noop, **changes)


def test_decorator_builds_a_processing() -> None:
    @processing(name="cube", mode="immediate", batch_size=5, interval_seconds=3.0, dependencies=["sum"])
    def cube(numbers: list[int]) -> list[int]:
        return [n**3 for n in numbers]

    assert isinstance(cube, Processing)
    assert (cube.name, cube.mode, cube.batch_size, cube.interval_seconds) == ("cube", "immediate", 5, 3.0)
    assert cube.dependencies == ("sum",)
    assert (cube.timeout_seconds, cube.max_attempts, cube.blocking, cube.claim) == (60.0, 3, True, "lease")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cube.mode = "batch"  # type: ignore[misc]


# --- functions -------------------------------------------------------------------------------------------


async def test_sync_function() -> None:
    proc = Processing(name="inc", function=lambda ns: [n + 1 for n in ns])
    assert await proc.run([1, 2, 3]) == [2, 3, 4]


async def test_async_function() -> None:
    async def triple(numbers: list[int]) -> list[int]:
        await asyncio.sleep(0)
        return [n * 3 for n in numbers]

    assert await Processing(name="triple", function=triple).run([1, -2]) == [3, -6]


async def test_blocking_function_runs_off_the_event_loop() -> None:
    seen: list[int] = []

    def where(numbers: list[int]) -> list[int]:
        seen.append(threading.get_ident())
        return numbers

    await Processing(name="where", function=where, blocking=True).run([1])
    assert seen and seen[0] != threading.get_ident()


async def test_blocking_function_does_not_stall_the_event_loop() -> None:
    def slow(numbers: list[int]) -> list[int]:
        time.sleep(0.3)
        return numbers

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        assert await Processing(name="slow", function=slow).run([1]) == [1]
    finally:
        task.cancel()
    assert ticks >= 5


async def test_non_blocking_function_runs_on_the_event_loop() -> None:
    seen: list[int] = []

    def where(numbers: list[int]) -> list[int]:
        seen.append(threading.get_ident())
        return numbers

    await Processing(name="where", function=where, blocking=False).run([1])
    assert seen == [threading.get_ident()]


async def test_item_failed_passes_through() -> None:
    def half(numbers: list[int]) -> list[Any]:
        return [n // 2 if n % 2 == 0 else ItemFailed(f"{n} is odd") for n in numbers]

    results = await Processing(name="half", function=half).run([4, 3, 10])
    assert results[0] == 2 and results[2] == 5
    assert isinstance(results[1], ItemFailed)
    assert results[1].message == "3 is odd"
    assert repr(results[1]) == "ItemFailed('3 is odd')"


@pytest.mark.parametrize(
    "answer",
    [[1], [1, 2, 3], [], None, (1, 2), {"results": [1, 2]}, "12"],
)
async def test_wrong_number_or_type_of_results(answer: Any) -> None:
    proc = Processing(name="wrong", function=lambda ns: answer)
    with pytest.raises(ProcessingError, match="instead of 2 results"):
        await proc.run([1, 2])


async def test_exception_becomes_processing_error() -> None:
    def boom(numbers: list[int]) -> list[int]:
        raise ValueError("bad input")

    with pytest.raises(ProcessingError, match=r"^ValueError: bad input$") as info:
        await Processing(name="boom", function=boom).run([1])
    assert isinstance(info.value.__cause__, ValueError)


async def test_processing_error_passes_unchanged() -> None:
    async def refuse(numbers: list[int]) -> list[int]:
        raise ProcessingError("upstream said no")

    with pytest.raises(ProcessingError, match=r"^upstream said no$"):
        await Processing(name="refuse", function=refuse).run([1])


async def test_async_function_timeout() -> None:
    async def forever(numbers: list[int]) -> list[int]:
        await asyncio.sleep(30)
        return numbers

    started = time.monotonic()
    with pytest.raises(ProcessingError, match=re.escape("timed out after 0.2 s")):
        await Processing(name="forever", function=forever, timeout_seconds=0.2).run([1])
    assert time.monotonic() - started < 2


async def test_blocking_function_timeout_answers_promptly() -> None:
    release = threading.Event()

    def stuck(numbers: list[int]) -> list[int]:
        release.wait(5)
        return numbers

    started = time.monotonic()
    try:
        with pytest.raises(ProcessingError, match="timed out"):
            await Processing(name="stuck", function=stuck, timeout_seconds=0.2).run([1])
        assert time.monotonic() - started < 2
    finally:
        release.set()


# --- commands --------------------------------------------------------------------------------------------


async def test_command_reads_the_batch_on_stdin() -> None:
    proc = command(
        "import json, sys; batch = json.load(sys.stdin); "
        "json.dump({'results': [[batch['processing'], i['number']] for i in batch['items']]}, sys.stdout)",
        name="echo",
    )
    assert await proc.run([5, -6]) == [["echo", 5], ["echo", -6]]


async def test_command_item_failures_are_plain_results() -> None:
    proc = command('import sys; sys.stdin.read(); print(\'{"results": [1, {"error": "x"}]}\')')
    assert await proc.run([1, 2]) == [1, {"error": "x"}]


async def test_command_timeout_kills_the_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    proc = command(
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)",
        timeout=0.5,
    )
    started = time.monotonic()
    with pytest.raises(ProcessingError, match="timed out"):
        await proc.run([1])
    assert time.monotonic() - started < 5
    pid = await read_pid(pid_file)
    deadline = time.monotonic() + 3
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, f"process {pid} still exists after the timeout"
        await asyncio.sleep(0.05)


async def test_command_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    proc = command(
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(30)",
        timeout=1.0,
    )
    with pytest.raises(ProcessingError, match="timed out"):
        await proc.run([1])
    grandchild = await read_pid(pid_file)
    assert await wait_gone(grandchild), f"grandchild {grandchild} survived the timeout"


async def test_cancelling_a_command_kills_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    proc = command(f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)")
    task = asyncio.create_task(proc.run([1]))
    pid = await read_pid(pid_file)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_gone(pid)


async def test_command_exit_code_and_stderr_tail() -> None:
    proc = command(
        "import sys; sys.stdin.read(); sys.stderr.write('x' * 2000 + 'the real reason'); sys.exit(3)"
    )
    with pytest.raises(ProcessingError) as info:
        await proc.run([1])
    message = str(info.value)
    assert message.startswith("command exited with code 3: ")
    assert message.endswith("the real reason")
    assert len(message) < 600


async def test_command_killed_by_a_signal() -> None:
    proc = command("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(ProcessingError, match="exited with code -9"):
        await proc.run([1])


@pytest.mark.parametrize(
    "stdout",
    ["not json at all", "", "[1, 2]", '{"answers": [1]}', '"results"', "null"],
)
async def test_command_printing_garbage(stdout: str) -> None:
    proc = command(f"import sys; sys.stdin.read(); sys.stdout.write({stdout!r})")
    with pytest.raises(ProcessingError, match="did not write"):
        await proc.run([1])


async def test_command_results_not_a_list() -> None:
    proc = command('import sys; sys.stdin.read(); print(\'{"results": {"a": 1}}\')')
    with pytest.raises(ProcessingError, match="not a list"):
        await proc.run([1])


async def test_command_wrong_number_of_results() -> None:
    proc = command("import sys; sys.stdin.read(); print('{\"results\": [1]}')")
    with pytest.raises(ProcessingError, match="instead of 3 results"):
        await proc.run([1, 2, 3])


async def test_missing_executable() -> None:
    proc = Processing(name="missing", command=("/nonexistent/squall-processing",))
    with pytest.raises(ProcessingError, match="FileNotFoundError"):
        await proc.run([1])


async def test_command_environment_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_DATABASE_URL", "postgresql://squall:hunter2@db/squall")
    monkeypatch.setenv("SQUALL_PROCESSINGS__SUM__MODE", "immediate")
    monkeypatch.setenv("SOME_API_TOKEN", "hunter3")
    monkeypatch.setenv("TZ", "UTC")
    proc = command(
        "import json, os, sys; sys.stdin.read(); json.dump({'results': [dict(os.environ)]}, sys.stdout)"
    )
    [env] = await proc.run([1])
    assert not [name for name in env if name.upper().startswith("SQUALL_")]
    assert "SOME_API_TOKEN" not in env
    assert "hunter2" not in orjson.dumps(env).decode()
    assert env.get("TZ") == "UTC"  # an allowed variable is passed on
    assert set(env) <= {
        "PATH",
        "LANG",
        "LC_ALL",
        "TZ",
        "HOME",
        "TMPDIR",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "LC_CTYPE",
    }


# --- registry --------------------------------------------------------------------------------------------


def test_registry_mapping() -> None:
    a = Processing(name="b_proc", function=_noop, mode="immediate")
    b = Processing(name="a_proc", function=_noop)
    registry = Registry([a, b])
    assert list(registry) == ["a_proc", "b_proc"]
    assert len(registry) == 2
    assert registry["b_proc"] is a
    assert "a_proc" in registry and "c_proc" not in registry
    assert registry.of_mode("immediate") == [a]
    assert registry.of_mode("batch") == [b]
    with pytest.raises(KeyError):
        registry["c_proc"]


def test_registry_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="'dup' is registered twice"):
        Registry([Processing(name="dup", function=_noop), Processing(name="dup", function=_noop)])


def test_load_registry_has_the_builtins() -> None:
    registry = load_registry(load_settings())
    assert set(registry) == BUILTIN_NAMES
    assert registry["sum"].mode == "batch"
    # Pure arithmetic holds its items by row locks; a command may crash or stall: leases.
    assert (registry["sum"].claim, registry["mul"].claim, registry["square"].claim) == (
        "lock",
        "lock",
        "lease",
    )


@pytest.mark.usefixtures("repo_on_path")
@pytest.mark.parametrize("reference", [SAMPLE, f"{SAMPLE}:PROCESSINGS"])
async def test_load_registry_with_a_module(reference: str) -> None:
    registry = load_registry(load_settings(processing_modules=[reference]))
    assert set(registry) == BUILTIN_NAMES | {"sample_cube", "sample_negate"}
    assert await registry["sample_cube"].run([2, -3]) == [8, -27]
    assert await registry["sample_negate"].run([2, -3]) == [-2, 3]
    assert [p.name for p in registry.of_mode("immediate")] == ["sample_negate"]


@pytest.mark.usefixtures("repo_on_path")
def test_load_registry_with_a_single_processing_attribute() -> None:
    registry = load_registry(load_settings(processing_modules=[f"{SAMPLE}:cube"]))
    assert set(registry) == BUILTIN_NAMES | {"sample_cube"}


@pytest.mark.usefixtures("repo_on_path")
def test_load_registry_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_PROCESSING_MODULES", f'["{SAMPLE}"]')
    monkeypatch.setenv("SQUALL_PROCESSINGS__SAMPLE_CUBE__MODE", "immediate")
    registry = load_registry(load_settings())
    assert registry["sample_cube"].mode == "immediate"


@pytest.mark.usefixtures("repo_on_path")
def test_load_registry_applies_overrides() -> None:
    settings = load_settings(
        processing_modules=[SAMPLE],
        processings={
            "sample_cube": {"mode": "immediate", "batch_size": 7},
            "sum": {"timeout_seconds": 2, "claim": "lease"},
        },
    )
    registry = load_registry(settings)
    cube = registry["sample_cube"]
    assert (cube.mode, cube.batch_size) == ("immediate", 7)
    assert cube.timeout_seconds == 12.0  # not overridden: kept from the registration
    assert (registry["sum"].timeout_seconds, registry["sum"].claim) == (2, "lease")
    assert registry["sum"].mode == "batch"
    assert registry["mul"].timeout_seconds == 60.0


def test_override_from_environment_applies_to_a_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_PROCESSINGS__SUM__MODE", "immediate")
    registry = load_registry(load_settings())
    assert registry["sum"].mode == "immediate"
    assert registry["sum"].batch_size == 5000
    assert registry["mul"].mode == "batch"


def test_override_of_an_unknown_processing() -> None:
    settings = load_settings(processings={"nope": {"mode": "immediate"}})
    with pytest.raises(ValueError, match="unknown processings: \\['nope'\\]"):
        load_registry(settings)


@pytest.mark.usefixtures("repo_on_path")
def test_duplicate_names_rejected() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        load_registry(load_settings(processing_modules=[SAMPLE, f"{SAMPLE}:cube"]))


@pytest.mark.usefixtures("repo_on_path")
def test_reference_that_is_not_a_processing() -> None:
    with pytest.raises(ValueError, match="is not a Processing"):
        load_registry(load_settings(processing_modules=[f"{SAMPLE}:NOT_A_PROCESSING"]))


def test_unknown_module() -> None:
    with pytest.raises(ModuleNotFoundError):
        load_registry(load_settings(processing_modules=["tests.unit.no_such_module"]))


def test_dependencies_from_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_PROCESSINGS__SUM__DEPENDENCIES", '["sharedfs", "slurm"]')
    registry = load_registry(load_settings())
    assert registry["sum"].dependencies == ("sharedfs", "slurm")
    assert registry["mul"].dependencies == ()


def test_retry_delay_grows_exponentially_with_jitter_and_a_cap() -> None:
    proc = Processing(name="p", function=lambda ns: ns, backoff_seconds=1.0, max_backoff_seconds=10.0)
    for attempts, base in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (12, 10.0)):
        delays = [proc.retry_delay(attempts) for _ in range(200)]
        assert all(0.8 * base <= d <= 1.2 * base for d in delays), (attempts, min(delays), max(delays))
        assert len(set(delays)) > 100  # jittered


async def test_permanent_error_is_not_retryable() -> None:
    def refuse(numbers: list[int]) -> list[int]:
        raise PermanentError("never")

    proc = Processing(name="p", function=refuse)
    with pytest.raises(ProcessingError) as info:
        await proc.run([1])
    assert info.value.retryable is False and str(info.value) == "permanent: never"


def test_backoff_must_not_exceed_its_cap() -> None:
    with pytest.raises(ValueError, match="backoff"):
        Processing(name="p", function=lambda ns: ns, backoff_seconds=5.0, max_backoff_seconds=1.0)
