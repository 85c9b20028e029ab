"""Processings: named computations over a batch of items, registered without touching Squall's code.

A processing is either a Python callable taking the batch's numbers and returning one result per number
(sync or async; sync callables run in a worker thread so the event loop never blocks), or an external
command that reads ``{"processing": name, "items": [{"number": n}, ...]}`` as JSON on stdin and writes
``{"results": [...]}`` on stdout. It runs without a shell, with a clean environment and a timeout that
kills its whole process group.

Register your own with the ``squall.processings`` entry-point group or ``SQUALL_PROCESSING_MODULES``;
each names a module (or ``module:attribute``) holding :class:`Processing` objects::

    from squall.core.processings import processing

    @processing(name="cube", mode="immediate", batch_size=500)
    def cube(numbers: list[int]) -> list[int]:
        return [n ** 3 for n in numbers]
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import inspect
import json
import logging
import os
import random
import re
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

import orjson

from squall.core.rules import PROCESSING_MODES, ProcessingMode
from squall.core.settings import Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "squall.processings"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,62}")
Mode = ProcessingMode
Claim = Literal["lease", "lock"]
BatchFunction = Callable[[list[int]], "list[Any] | Awaitable[list[Any]]"]

# Only these variables reach an external command: no credentials or settings of Squall leak into it.
_COMMAND_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


class ProcessingError(Exception):
    """The batch failed as a whole (the processing raised, timed out or answered garbage).

    ``retryable`` failures put the batch's items back to pending, after a backoff, until they have had
    ``max_attempts`` attempts; the others fail them at once."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class PermanentError(Exception):
    """Raise it from a processing for a failure no retry can mend (bad input, a refused operation)."""


class ItemFailed:
    """Return this in place of a result to fail one item and keep the rest of the batch."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"ItemFailed({self.message!r})"


@dataclass(frozen=True)
class Processing:
    name: str
    function: BatchFunction | None = None
    command: tuple[str, ...] | None = None
    mode: Mode = "batch"
    batch_size: int = 1000
    timeout_seconds: float = 60.0
    # Attempts an item gets when its whole batch fails before the item is failed for good, and the delay
    # before a retry: backoff_seconds * 2^(attempts - 1), at most max_backoff_seconds, +-20 % jitter.
    max_attempts: int = 3
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 300.0
    # Polling interval of a batch processing; None: the scheduler's default.
    interval_seconds: float | None = None
    # Run a sync function in a worker thread (default). Only trivially cheap functions should set False.
    blocking: bool = True
    dependencies: tuple[str, ...] = field(default_factory=tuple)
    # How a poll task holds its items while they are computed. "lease": marked running under a lease and
    # committed first, so an item whose processing kills the processor is still counted an attempt (and
    # failed after max_attempts). "lock": row locks in one transaction with the result, one write per item
    # instead of two, handed back at once if the processor dies; only for functions that cannot crash or
    # stall the processor, which then never repeats an attempt the crash interrupted.
    claim: Claim = "lease"

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"processing name {self.name!r} must match {NAME_PATTERN.pattern}")
        if (self.function is None) == (self.command is None):
            raise ValueError(f"processing {self.name!r} needs exactly one of function or command")
        if self.mode not in PROCESSING_MODES:
            raise ValueError(f"processing {self.name!r}: mode must be batch or immediate")
        if self.claim not in ("lease", "lock"):
            raise ValueError(f"processing {self.name!r}: claim must be lease or lock")
        if self.batch_size < 1 or self.timeout_seconds <= 0 or self.max_attempts < 1:
            raise ValueError(
                f"processing {self.name!r}: batch_size, timeout_seconds and max_attempts must be positive"
            )
        if not 0 <= self.backoff_seconds <= self.max_backoff_seconds:
            raise ValueError(f"processing {self.name!r}: need 0 <= backoff_seconds <= max_backoff_seconds")

    def retry_delay(self, attempts: int) -> float:
        """Seconds before an item that has had ``attempts`` attempts may be claimed again."""
        delay = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** max(0, attempts - 1))
        return float(delay * random.uniform(0.8, 1.2))

    async def run(self, numbers: list[int]) -> list[Any]:
        """Results, one per number (or :class:`ItemFailed`); raises ProcessingError for the whole batch."""
        try:
            async with asyncio.timeout(self.timeout_seconds):
                if self.command is not None:
                    results = await run_command(self.command, self.name, numbers)
                else:
                    results = await self._call(numbers)
        except TimeoutError:
            raise ProcessingError(f"timed out after {self.timeout_seconds} s") from None
        except ProcessingError:
            raise
        except PermanentError as exc:
            raise ProcessingError(f"permanent: {exc}", retryable=False) from exc
        except Exception as exc:
            raise ProcessingError(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(results, list) or len(results) != len(numbers):
            raise ProcessingError(f"answered {type(results).__name__} instead of {len(numbers)} results")
        return results

    async def _call(self, numbers: list[int]) -> list[Any]:
        assert self.function is not None
        if inspect.iscoroutinefunction(self.function):
            results: list[Any] = await self.function(numbers)
            return results
        if self.blocking:
            return await asyncio.to_thread(self.function, numbers)  # type: ignore[arg-type]
        return self.function(numbers)  # type: ignore[return-value]


def processing(
    name: str,
    *,
    mode: Mode = "batch",
    batch_size: int = 1000,
    timeout_seconds: float = 60.0,
    max_attempts: int = 3,
    backoff_seconds: float = 1.0,
    max_backoff_seconds: float = 300.0,
    interval_seconds: float | None = None,
    blocking: bool = True,
    dependencies: Iterable[str] = (),
    claim: Claim = "lease",
) -> Callable[[BatchFunction], Processing]:
    """Decorator turning a batch function into a :class:`Processing`."""

    def wrap(function: BatchFunction) -> Processing:
        return Processing(
            name=name,
            function=function,
            mode=mode,
            batch_size=batch_size,
            timeout_seconds=timeout_seconds,
            max_attempts=max_attempts,
            backoff_seconds=backoff_seconds,
            max_backoff_seconds=max_backoff_seconds,
            interval_seconds=interval_seconds,
            blocking=blocking,
            dependencies=tuple(dependencies),
            claim=claim,
        )

    return wrap


async def run_command(argv: tuple[str, ...], name: str, numbers: list[int]) -> list[Any]:
    """Run an external command on a batch (no shell); on cancellation or timeout kill its process group."""
    env = {key: os.environ[key] for key in _COMMAND_ENV_KEEP if key in os.environ}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    payload = orjson.dumps({"processing": name, "items": [{"number": n} for n in numbers]})
    try:
        stdout, stderr = await proc.communicate(payload)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-500:]
        raise ProcessingError(f"command exited with code {proc.returncode}: {tail}")
    try:
        # The standard library's parser: orjson would turn integers beyond 64 bits into floats.
        answer = json.loads(stdout)
        results = answer["results"]
    except (ValueError, KeyError, TypeError):
        raise ProcessingError('command did not write {"results": [...]} as JSON on stdout') from None
    if not isinstance(results, list):
        raise ProcessingError("command's results is not a list")
    return results


class Registry(Mapping[str, Processing]):
    """The processings this process knows, by name."""

    def __init__(self, processings: Iterable[Processing]) -> None:
        self._by_name: dict[str, Processing] = {}
        for proc in processings:
            if proc.name in self._by_name:
                raise ValueError(f"processing {proc.name!r} is registered twice")
            self._by_name[proc.name] = proc

    def __getitem__(self, name: str) -> Processing:
        return self._by_name[name]

    # The dict's own lookups: Mapping's generic ones go through __getitem__ and an exception (per item, on
    # the hot paths of the gateway and the processor).
    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str, default: Processing | None = None) -> Processing | None:  # type: ignore[override]
        return self._by_name.get(name, default)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._by_name))

    def __len__(self) -> int:
        return len(self._by_name)

    def of_mode(self, mode: Mode) -> list[Processing]:
        return [p for p in self._by_name.values() if p.mode == mode]


def _collect(value: Any, origin: str) -> list[Processing]:
    if isinstance(value, Processing):
        return [value]
    if inspect.ismodule(value):
        return [v for v in vars(value).values() if isinstance(v, Processing)]
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        found = list(value)
        if all(isinstance(v, Processing) for v in found):
            return found
    raise ValueError(f"{origin} is not a Processing, a list of them or a module holding them")


def _import(reference: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def load_registry(settings: Settings) -> Registry:
    """Entry points (group ``squall.processings``), then ``SQUALL_PROCESSING_MODULES``, then overrides."""
    found: list[Processing] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.extend(_collect(ep.load(), f"entry point {ep.name} ({ep.value})"))
    for reference in settings.processing_modules:
        found.extend(_collect(_import(reference), f"SQUALL_PROCESSING_MODULES entry {reference!r}"))
    unknown = set(settings.processings) - {p.name for p in found}
    if unknown:
        raise ValueError(f"SQUALL_PROCESSINGS names unknown processings: {sorted(unknown)}")
    overridden = []
    for proc in found:
        override = settings.processings.get(proc.name)
        if override is not None:
            changes = {k: v for k, v in override.model_dump().items() if v is not None}
            if "dependencies" in changes:
                changes["dependencies"] = tuple(changes["dependencies"])
            proc = dataclasses.replace(proc, **changes)
        overridden.append(proc)
    return Registry(overridden)
