"""The ``squall`` command: one role per container (gateway, processor, scheduler, migrate), ``dev`` for
the whole system on one machine, and ``submit`` / ``status`` as a client of the HTTP API."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeAlias

from squall.core.settings import Settings, load_settings

DEFAULT_URL = os.environ.get("SQUALL_URL", "http://127.0.0.1:8888")


def package_version() -> str:
    """Squall's version, as installed (pyproject.toml's ``version`` is its one source)."""
    try:
        return version("squall")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


# --- roles --------------------------------------------------------------------------------------------


def cmd_gateway(_: argparse.Namespace) -> int:
    from squall.core.lifecycle import run_service
    from squall.gateway.app import main

    run_service("gateway", load_settings(), main)
    return 0


def cmd_processor(_: argparse.Namespace) -> int:
    from squall.core.lifecycle import run_service
    from squall.processor.worker import main

    run_service("processor", load_settings(), main)
    return 0


def cmd_scheduler(_: argparse.Namespace) -> int:
    from squall.core.lifecycle import run_service
    from squall.scheduler.service import main

    run_service("scheduler", load_settings(), main)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from squall.core import migrate
    from squall.core.logs import configure_logging

    settings = load_settings()
    configure_logging("migrate", settings.log_format, settings.log_level)
    if args.check:
        return _check_schema(settings)
    migrate.upgrade(settings, args.revision)
    return 0


def _check_schema(settings: Settings) -> int:
    """``squall migrate --check``: 0 when this release can run against the database as it is (its own
    revision, or newer migrations that keep it working), 1 otherwise; the reason on stdout."""
    import asyncio

    from squall.core import migrate
    from squall.core.db import create_engine

    async def read() -> migrate.SchemaState:
        engine = create_engine(settings, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await migrate.schema_state(conn)
        finally:
            await engine.dispose()

    state = asyncio.run(read())
    _out(f"{state.verdict.value}: {state.describe()}")
    return 0 if state.verdict.runnable else 1


def cmd_prune(args: argparse.Namespace) -> int:
    """``squall prune [--dry-run]``: one retention pass now (what the scheduler's leader runs every
    SQUALL_RETENTION__INTERVAL_SECONDS); prints the rows deleted (or that would be) by table, as JSON."""
    import asyncio

    from squall.core.db import create_engine
    from squall.core.store import retention

    settings = load_settings()
    periods = retention.Periods.of(settings.retention.finished_seconds, settings.retention.dead_seconds)

    async def run() -> retention.Deleted:
        engine = create_engine(settings)
        try:
            return await retention.run_pass(
                engine,
                periods,
                settings.retention.batch_size,
                args.dry_run,
                pause_seconds=settings.retention.pause_seconds,
            )
        finally:
            await engine.dispose()

    deleted = asyncio.run(run())
    _out(json.dumps({"dry_run": args.dry_run, "deleted": deleted.rows}))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from squall.cli.dev import DevOptions, run_dev

    run_dev(
        DevOptions(
            port=args.port,
            processors=args.processors,
            gateways=args.gateways,
            schedulers=args.schedulers,
            data_dir=Path(args.data_dir),
            state_file=Path(args.state_file) if args.state_file else None,
            host=args.host,
        )
    )
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    """``squall tokens create|list|revoke``: API tokens in PostgreSQL (or an entry for a tokens file)."""
    import asyncio

    from squall.core.db import create_engine
    from squall.core.store import tokens
    from squall.gateway import auth

    if args.action == "create":
        if not auth.TOKEN_NAME.fullmatch(args.name):
            _err("squall tokens: NAME must be 1-63 of a-z 0-9 _ . - starting with a letter or digit")
            return 2
        token = auth.new_token()
        entry: dict[str, Any] = {
            "name": args.name,
            "scopes": sorted(set(args.scope)),
            "sha256": auth.token_digest(token),
        }
        if args.rate is not None:
            entry["rate_per_second"] = args.rate
        if args.burst is not None:
            entry["burst"] = args.burst
        if args.file_entry:  # for a tokens file (a Secret): nothing is stored here
            _out(json.dumps({"token": token, "entry": entry}, indent=2))
            return 0

    settings = load_settings()

    async def run() -> int:
        engine = create_engine(settings, pool_size=1)
        try:
            if args.action == "create":
                try:
                    await tokens.create_token(
                        engine, args.name, entry["sha256"], entry["scopes"], args.rate, args.burst
                    )
                except tokens.TokenExists:
                    _err(f"squall tokens: a token named {args.name!r} exists (names are not reused)")
                    return 1
                _err(f"token {args.name!r} ({', '.join(entry['scopes'])}) created; it is shown once, here:")
                _out(token)
            elif args.action == "list":
                _out(json.dumps(await tokens.list_tokens(engine), indent=2))
            elif not await tokens.revoke_token(engine, args.name):
                _err(f"squall tokens: no live token named {args.name!r}")
                return 1
            else:
                forget = settings.auth.cache_seconds
                _err(f"token {args.name!r} revoked (gateways forget it within {forget:g} s)")
            return 0
        finally:
            await engine.dispose()

    return asyncio.run(run())


def cmd_top(args: argparse.Namespace) -> int:
    from squall.cli import top

    return top.run(args.url, args.token, args.interval, args.once)


# --- client -------------------------------------------------------------------------------------------


class ApiFailure(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {json.dumps(body)}")
        self.status = status
        self.body = body


def _call(method: str, url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token := os.environ.get("SQUALL_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = payload.decode(errors="replace")
        raise ApiFailure(exc.code, parsed) from None


def _numbers(args: argparse.Namespace) -> list[int]:
    words: list[str] = list(args.numbers)
    if args.file:
        source = sys.stdin if args.file == "-" else open(args.file)
        with source:
            words.extend(source.read().replace(",", " ").split())
    try:
        return [int(w) for w in words]
    except ValueError as exc:
        raise SystemExit(f"squall submit: not an integer: {exc}") from None


def _progress(done: int, total: int, started: float) -> None:
    if not sys.stderr.isatty() and done != total:
        return
    width = 30
    filled = int(width * done / total) if total else width
    rate = done / max(time.monotonic() - started, 1e-6)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} items  {rate:,.0f}/s")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def cmd_submit(args: argparse.Namespace) -> int:
    numbers = _numbers(args)
    if not numbers:
        raise SystemExit("squall submit: give numbers as arguments or with --file")
    chunks = [numbers[i : i + args.chunk] for i in range(0, len(numbers), args.chunk)]
    started = time.monotonic()
    done = 0
    for index, chunk in enumerate(chunks):
        body: dict[str, Any] = {"items": [{"number": n, "job": args.job} for n in chunk]}
        if args.rid is not None:
            body["rid"] = args.rid if len(chunks) == 1 else f"{args.rid}-{index}"
        try:
            _, answer = _call("POST", f"{args.url}/v1/requests", body)
        except ApiFailure as exc:
            _err(f"squall submit: {exc}")
            return 1
        except OSError as exc:
            _err(f"squall submit: cannot reach {args.url}: {exc}")
            return 1
        done += len(chunk)
        if len(chunks) > 1:
            _progress(done, len(numbers), started)
        _out(json.dumps({"task_id": answer["task_id"], "rid": answer["rid"], "items": len(chunk)}))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        if args.rid is not None:
            url = f"{args.url}/v1/requests/{urllib.parse.quote(args.rid, safe='')}"
        elif args.task_id:
            url = f"{args.url}/v1/tasks/{urllib.parse.quote(args.task_id, safe='')}"
        else:
            raise SystemExit("squall status: give a TASK_ID or --rid RID")
        deadline = time.monotonic() + args.wait
        while True:
            _, answer = _call("GET", url)
            finished = (
                answer.get("processed")
                if args.rid is not None
                else answer.get("state") in ("succeeded", "failed", "dead")
            )
            if finished or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
    except ApiFailure as exc:
        _err(f"squall status: {exc}")
        return 1
    except OSError as exc:
        _err(f"squall status: cannot reach {args.url}: {exc}")
        return 1
    _out(json.dumps(answer, indent=2))
    if args.wait > 0 and not finished:  # scripts (and the chart's helm test) rely on the exit code
        _err(f"squall status: not finished after {args.wait:g} s")
        return 3
    return 0


# --- parser -------------------------------------------------------------------------------------------


def _at_least(low: float, kind: type[Any]) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        return value

    return parse


# What add_subparsers returns (a string: the class is generic only to type checkers).
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="squall",
        description="Squall: a task-processing platform (gateway, processors, scheduler over NATS JetStream "
        "and PostgreSQL). Settings come from SQUALL_* environment variables; see the README.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The order of these calls is the order of the commands in --help.
    _add_dev_command(sub)
    _add_service_commands(sub)
    _add_tokens_command(sub)
    _add_migrate_command(sub)
    _add_client_commands(sub)
    _add_top_command(sub)
    return parser


def _add_dev_command(sub: _Commands) -> None:
    dev = sub.add_parser("dev", help="run the whole system locally (embedded NATS and PostgreSQL by default)")
    dev.add_argument("--port", type=int, default=8888, help="gateway port (default 8888)")
    dev.add_argument("--host", default="127.0.0.1", help="gateway address (default 127.0.0.1)")
    dev.add_argument("--processors", type=int, default=2, help="processor processes (default 2)")
    dev.add_argument("--gateways", type=int, default=1, help="gateway processes sharing the port (default 1)")
    dev.add_argument("--schedulers", type=int, default=1, help="scheduler processes (default 1)")
    dev.add_argument("--data-dir", default=".squall", help="embedded servers' data (default .squall)")
    dev.add_argument("--state-file", default=None, help="process table JSON (default DATA_DIR/dev.json)")
    dev.set_defaults(func=cmd_dev)


def _add_service_commands(sub: _Commands) -> None:
    """One command per role: each runs one service in the foreground."""
    for name, func, text in (
        ("gateway", cmd_gateway, "run the HTTP API"),
        ("processor", cmd_processor, "run a processor"),
        ("scheduler", cmd_scheduler, "run a scheduler"),
    ):
        sub.add_parser(name, help=text).set_defaults(func=func)


def _add_tokens_command(sub: _Commands) -> None:
    tokens = sub.add_parser("tokens", help="create, list or revoke API tokens (in PostgreSQL)")
    tokens_sub = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = tokens_sub.add_parser("create", help="make a token and print it once")
    create.add_argument("name", help="a name for people and logs (a-z 0-9 _ . -)")
    create.add_argument(
        "--scope",
        action="append",
        choices=["submit", "read", "admin"],
        required=True,
        help="submit, read or admin (admin grants everything); repeat for several",
    )
    create.add_argument(
        "--rate",
        type=_at_least(0.0, float),
        default=None,
        help="requests/s (default: SQUALL_AUTH__RATE_PER_SECOND; 0: unlimited)",
    )
    create.add_argument(
        "--burst", type=_at_least(1, int), default=None, help="requests at once (default: one second's rate)"
    )
    create.add_argument(
        "--file-entry",
        action="store_true",
        help="store nothing; print the token and its entry for SQUALL_AUTH__TOKENS_FILE",
    )
    tokens_sub.add_parser("list", help="list tokens (never the tokens themselves)")
    revoke = tokens_sub.add_parser("revoke", help="revoke a token")
    revoke.add_argument("name")
    tokens.set_defaults(func=cmd_tokens)


def _add_migrate_command(sub: _Commands) -> None:
    mig = sub.add_parser("migrate", help="apply database migrations (Alembic)")
    mig.add_argument("--revision", default="head", help="target revision (default head)")
    mig.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 when this release cannot run against the database as it is",
    )
    mig.set_defaults(func=cmd_migrate)
    prune = sub.add_parser(
        "prune", help="delete finished work older than its retention period now (SQUALL_RETENTION__*)"
    )
    prune.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
    prune.set_defaults(func=cmd_prune)


def _add_client_commands(sub: _Commands) -> None:
    """``submit`` and ``status``: clients of the HTTP API."""
    submit = sub.add_parser("submit", help="submit numbers to a processing over the HTTP API")
    submit.add_argument("numbers", nargs="*", help="integers to submit")
    submit.add_argument("--job", default="sum", help="processing name (default sum)")
    submit.add_argument("--rid", default=None, help="request id (chunks get -0, -1, ... appended)")
    submit.add_argument("--file", default=None, help="read integers from a file ('-' for stdin)")
    submit.add_argument("--chunk", type=int, default=10_000, help="items per request (default 10000)")
    submit.add_argument(
        "--url", default=DEFAULT_URL, help=f"gateway URL (default {DEFAULT_URL}, or SQUALL_URL)"
    )
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="show a task (by id) or a request (by --rid)")
    status.add_argument("task_id", nargs="?", help="task id")
    status.add_argument("--rid", default=None, help="request id")
    status.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="seconds to wait for it to finish (exit status 3 if it has not by then)",
    )
    status.add_argument(
        "--url", default=DEFAULT_URL, help=f"gateway URL (default {DEFAULT_URL}, or SQUALL_URL)"
    )
    status.set_defaults(func=cmd_status)


def _add_top_command(sub: _Commands) -> None:
    top = sub.add_parser(
        "top", help="a live view: intake and completion rates, backlog, dependencies, dead letters"
    )
    top.add_argument("--url", default=DEFAULT_URL, help=f"gateway URL (default {DEFAULT_URL}, or SQUALL_URL)")
    top.add_argument(
        "--token",
        default=os.environ.get("SQUALL_TOKEN"),
        help="API token with the read scope (default: SQUALL_TOKEN)",
    )
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    top.add_argument(
        "--once", action="store_true", help="print one screen (two reads --interval apart) and exit"
    )
    top.set_defaults(func=cmd_top)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
