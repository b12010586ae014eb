"""Command line: ``otpd serve``, ``otpd check-config``, ``otpd render-template``, ``otpd
outbox latest``, ``otpd dead-letters list|replay``. The only place that owns
``asyncio.run``, signal handling and logging setup."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import re
import signal
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from otpd.config import PROVIDERS, Config, load_config, masked_config
from otpd.errors import ConfigError, OtpdError

if TYPE_CHECKING:
    from otpd.app import Role
    from otpd.supervisor import ChildLink

__all__ = ["main"]

MAX_PROCESSES = 64


def _processes(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_PROCESSES}")
    return count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otpd", description="OTP and transactional messaging daemon"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument(
        "--debug", action="store_true", help="print the traceback of a start-up failure too"
    )
    serve.add_argument(
        "--processes",
        type=_processes,
        default=1,
        metavar="N",
        help="run N event-loop processes on one port (SO_REUSEPORT) under a supervisor; "
        'needs store.backend = "redis" (default 1: this process only)',
    )
    serve.add_argument(
        "--role",
        choices=("all", "api", "worker"),
        default="all",
        help="all: serve and deliver (default); api: serve the HTTP API and queue tasks; "
        "worker: deliver from the durable queue, serving /healthz, /readyz and /metrics only",
    )
    # set by the supervisor on its children: the fd of the child's end of their link
    serve.add_argument("--supervised-fd", type=int, help=argparse.SUPPRESS)
    check = sub.add_parser("check-config", help="validate and print the effective config")
    render = sub.add_parser(
        "render-template",
        help="preview a template as HTML, text or subject",
        description="Render NAME with the product settings of the config, as an email would.",
    )
    render.add_argument("name", help="template name, e.g. email_verification")
    render.add_argument(
        "--context", default="{}", help='template variables as a JSON object: \'{"name": "Ada"}\''
    )
    render.add_argument(
        "--format", choices=("html", "text", "subject", "sms"), default="html", dest="fmt"
    )
    render.add_argument("--locale", help="a language tag such as de; unknown ones fall back to en")
    outbox = sub.add_parser("outbox", help="read the dev outbox (dev mode only)")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True)
    newest = outbox_sub.add_parser(
        "latest",
        help="print the newest message, code or link sent to an address",
        description="Print the newest message sent to ADDRESS from the dev outbox, or only "
        "its code or link. Exits 1 when there is none, or when the newest message to ADDRESS "
        "was refused by a limit (so no stale code or link is printed).",
    )
    newest.add_argument("--to", required=True, metavar="ADDRESS", help="email or E.164 number")
    part = newest.add_mutually_exclusive_group()
    part.add_argument("--code", action="store_true", help="only the one-time code")
    part.add_argument("--link", action="store_true", help="only the link carrying a token")
    dead = sub.add_parser(
        "dead-letters",
        help="list or replay tasks that failed for good (durable queue on Redis)",
    )
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    listing = dead_sub.add_parser("list", help="the newest dead letters, one JSON object a line")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (1 to 1000)")
    listing.add_argument("--channel", choices=("email", "sms"), help="only this channel")
    replay = dead_sub.add_parser(
        "replay", help="queue a dead letter again (same task id, attempts reset)"
    )
    replay.add_argument("task_id")
    for p in (serve, check, render, newest, listing, replay):
        p.add_argument("--config", help="TOML file (default: $OTPD_CONFIG or ./config.toml)")
    return parser


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"otpd: invalid configuration: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def _render_template(
    config: Config, name: str, context_json: str, fmt: str, locale: str | None
) -> int:
    from otpd.errors import ValidationError
    from otpd.templating import TemplateRenderer
    from otpd.validation import check_locale

    try:
        context = json.loads(context_json)
    except json.JSONDecodeError as exc:
        print(f"otpd: --context is not valid JSON ({exc.msg})", file=sys.stderr)
        return 2
    if not isinstance(context, dict):
        print("otpd: --context must be a JSON object", file=sys.stderr)
        return 2
    renderer = TemplateRenderer(
        config.product, config.email.templates_dir, allow_http=config.server.env != "production"
    )

    async def render() -> str:
        tag = check_locale(locale)
        if fmt == "sms":
            return await renderer.render_sms(name, context, tag)
        email = await renderer.render_email(name, context, tag)
        return {"html": email.html, "text": email.text, "subject": email.subject}[fmt]

    try:
        out = asyncio.run(render())
    except ValidationError as exc:
        print(f"otpd: {exc.message}", file=sys.stderr)
        return 2
    sys.stdout.write(out if out.endswith("\n") else out + "\n")
    return 0


def _outbox_latest(config: Config, to: str, *, code: bool, link: bool) -> int:
    from otpd.outbox import dev_outbox_refusals, find_code, find_link, latest

    if dev_outbox_refusals(config) is None:
        why = (
            f"works in dev mode only (server.env is {config.server.env})"
            if config.server.env != "dev"
            else "needs the dev outbox (email.providers has no outbox, sms.providers no console)"
        )
        print(f"otpd: outbox latest {why}", file=sys.stderr)
        return 2
    entry = latest(config.outbox.dir, to)
    if entry is None:
        print(f"otpd: no message to {to} in {config.outbox.dir}", file=sys.stderr)
        return 1
    if entry.refused:
        print(
            f"otpd: the newest message to {to} ({entry.tag}) was refused by a limit "
            f"({entry.refused}): nothing newer was sent",
            file=sys.stderr,
        )
        return 1
    if code or link:
        found = find_code(entry, config.otp.length) if code else find_link(entry)
        if found is None:
            what = "code" if code else "link"
            print(
                f"otpd: the newest message to {to} ({entry.tag}) holds no {what}", file=sys.stderr
            )
            return 1
        print(found)
        return 0
    if entry.subject:
        print(f"Subject: {entry.subject}\n")
    print(entry.text)
    return 0


def _dead_letters(config: Config, args: argparse.Namespace) -> int:
    """``otpd dead-letters list|replay`` straight on the durable queue's Redis; a running
    daemon picks a replayed task up."""
    if config.store.backend != "redis" or not config.dispatch.durable:
        print(
            "otpd: dead letters of the in-process queue live in the daemon's memory: "
            "use GET /v1/dead-letters (the CLI reads the durable queue on Redis)",
            file=sys.stderr,
        )
        return 2
    from otpd.services.tasks import MAX_DEAD_LETTERS, is_task_id
    from otpd.store.redis import RedisStore
    from otpd.store.redis.streams import TaskStreams

    if args.dead_command == "list" and not 1 <= args.limit <= MAX_DEAD_LETTERS:
        print(f"otpd: --limit must be 1 to {MAX_DEAD_LETTERS}", file=sys.stderr)
        return 2

    async def run() -> int:
        async with RedisStore(config.store, partitions=config.dispatch.partitions) as store:
            streams = TaskStreams(store)
            now = time.time()
            if args.dead_command == "list":
                since = now - config.dispatch.dead_letter_ttl_seconds
                letters = [
                    d
                    for d in await streams.dead_letters(args.limit, since)
                    if args.channel is None or d.channel == args.channel
                ]
                for letter in letters[: args.limit]:
                    print(json.dumps(letter.to_public()))
                return 0
            task_id = args.task_id
            if not is_task_id(task_id) or not await streams.replay(
                task_id, config.dispatch.task_ttl_seconds, now
            ):
                print(f"otpd: no dead letter {task_id[:64]!r}", file=sys.stderr)
                return 1
            print(task_id)
            return 0

    try:
        return asyncio.run(run())
    except OtpdError as exc:
        print(f"otpd: {exc.message}", file=sys.stderr)
        return 1


def _users_of(config: Config, section: str) -> list[str]:
    configured = (*config.email.providers, *config.sms.providers)
    return [name for name in configured if PROVIDERS[name].section == section]


def _setting_of(config: Config, filename: str) -> tuple[str, str] | None:
    """The configured path (``outbox.dir``, ``smtp.ca_file``, ...) that ``filename`` is or
    lies under, the closest one if several, with its value."""
    target = Path(os.path.abspath(filename))
    found: list[tuple[int, str, str]] = []
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        if not dataclasses.is_dataclass(values):
            continue
        for item in dataclasses.fields(values):
            value = getattr(values, item.name)
            if not isinstance(value, str) or not value or item.metadata.get("secret"):
                continue
            path = Path(os.path.abspath(value))
            if path != Path("/") and (path == target or path in target.parents):
                found.append((len(path.parts), f"{section.name}.{item.name}", value))
    if not found:
        return None
    _, key, value = max(found)
    return key, value


def _startup_failure(exc: BaseException, config: Config) -> list[str]:
    """What ``otpd serve`` prints when it cannot start: one line naming what failed."""
    if isinstance(exc, ConfigError):
        return [f"invalid configuration: {problem}" for problem in exc.problems]
    if isinstance(exc, OtpdError):
        # the store names its URL, the server its address (StartupError), ...
        return [exc.message]
    if isinstance(exc, OSError) and exc.filename:
        reason = exc.strerror or type(exc).__name__
        setting = _setting_of(config, os.fsdecode(exc.filename))
        if setting is not None:
            key, value = setting
            users = _users_of(config, key.partition(".")[0])
            plural = "s" if len(users) > 1 else ""
            what = f"the {' and '.join(users)} provider{plural}" if users else key
            return [f"cannot open {what}: {key} = {value!r}: {reason}"]
        return [f"cannot start: {os.fsdecode(exc.filename)}: {reason}"]
    return [f"cannot start: {type(exc).__name__}: {exc}"]


def _serve_problem(config: Config, processes: int, role: Role) -> str | None:
    """Why ``otpd serve --processes N --role R`` cannot run on ``config``, or None."""
    from otpd.app import role_problem

    problem = role_problem(config, role)
    if problem is not None:
        return f"--role {role} {problem.removeprefix(f'role {role!r} ')}"
    if processes == 1:
        return None
    if config.store.backend != "redis":
        return (
            f'--processes {processes} needs store.backend = "redis": the memory store keeps '
            "codes, limits and tasks in each process"
        )
    if not config.security.secret_key:
        return (
            f"--processes {processes} needs security.secret_key (OTPD_SECRET_KEY): a process "
            "that makes up its own cannot verify the codes of the others"
        )
    if config.server.port == 0:
        return f"--processes {processes} needs a fixed server.port (0 gives each its own)"
    if config.metrics.port + processes - 1 > 65535:
        return f"--processes {processes} needs metrics.port + {processes - 1} <= 65535"
    return None


def _instance_base(config: Config) -> str:
    """What the supervisor's children are named after (``<base>-<i>``) in the durable queue."""
    base = config.server.instance_id or f"{socket.gethostname()}-{os.getpid()}"
    return re.sub(r"[^A-Za-z0-9_.:\-]", "-", base)[:60]


def _supervise(config: Config, args: argparse.Namespace) -> int:
    from otpd.supervisor import Supervisor, child_command

    argv = ["serve", "--role", args.role]
    if args.config is not None:
        argv += ["--config", args.config]
    if args.debug:
        argv.append("--debug")
    supervisor = Supervisor(
        child_command(argv),
        args.processes,
        _instance_base(config),
        drain_timeout=config.dispatch.drain_timeout_seconds,
        metrics_port=config.metrics.port,
    )
    code = supervisor.run()
    if code != 0 and supervisor.failure:
        structlog.get_logger("otpd").error("otpd.failed_to_start", error=supervisor.failure)
        print(f"otpd: {supervisor.failure}", file=sys.stderr)
    return code


async def _serve(config: Config, role: Role = "all", link: ChildLink | None = None) -> None:
    from otpd.api import HttpServer
    from otpd.app import Otpd

    log = structlog.get_logger("otpd")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reuse_port = link is not None
    async with contextlib.AsyncExitStack() as stack:
        if role == "all":
            server = await stack.enter_async_context(HttpServer(config, reuse_port=reuse_port))
        else:
            from otpd.api.health import HealthServer

            otpd = await stack.enter_async_context(Otpd(config, role=role))
            serving = HttpServer if role == "api" else HealthServer
            server = await stack.enter_async_context(serving(otpd, reuse_port=reuse_port))
        # Everything made at start-up lives as long as the process: keep it out of the
        # collector's full passes, which otherwise pause the loop for tens of milliseconds.
        gc.freeze()
        log.info(
            "otpd.listening",
            url=server.url,
            role=role,
            instance_id=server.otpd.instance_id,
            env=config.server.env,
            store=config.store.backend,
            email_providers=list(config.email.providers),
            sms_providers=list(config.sms.providers),
            outbox=config.outbox.dir
            if {"outbox", "console"} & {*config.email.providers, *config.sms.providers}
            else None,
        )
        if link is not None:
            link.ready()
            link.sock.setblocking(False)

            def supervisor_gone() -> None:
                if link.gone():
                    loop.remove_reader(link.sock.fileno())
                    log.warning("otpd.supervisor_gone")
                    stop.set()

            loop.add_reader(link.sock.fileno(), supervisor_gone)
            stack.callback(loop.remove_reader, link.sock.fileno())
        await stop.wait()
        log.info("otpd.stopping")
    log.info("otpd.stopped")


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    config = _load(args.config)
    if args.command == "render-template":
        raise SystemExit(_render_template(config, args.name, args.context, args.fmt, args.locale))
    if args.command == "dead-letters":
        raise SystemExit(_dead_letters(config, args))
    if args.command == "outbox":
        raise SystemExit(_outbox_latest(config, args.to, code=args.code, link=args.link))
    if args.command == "check-config":
        print(json.dumps(masked_config(config), indent=2))
        print("otpd: configuration is valid", file=sys.stderr)
        return
    from otpd.logs import configure_logging

    problem = _serve_problem(config, args.processes, args.role)
    if problem is not None:
        print(f"otpd: {problem}", file=sys.stderr)
        raise SystemExit(2)
    fmt = config.logging.format
    if fmt == "auto":
        fmt = "json" if config.server.env == "production" else "console"
    configure_logging(config.logging.level, fmt)
    if args.processes > 1:
        raise SystemExit(_supervise(config, args))
    link = None
    if args.supervised_fd is not None:
        from otpd.supervisor import ChildLink

        link = ChildLink(args.supervised_fd)
    try:
        asyncio.run(_serve(config, args.role, link))
    except Exception as exc:
        lines = _startup_failure(exc, config)
        structlog.get_logger("otpd").error("otpd.failed_to_start", error=lines[0])
        if link is not None:
            link.failed(lines[0])  # the supervisor prints it, once for all its children
        else:
            for line in lines:
                print(f"otpd: {line}", file=sys.stderr)
        if args.debug:
            traceback.print_exception(exc, file=sys.stderr)
        raise SystemExit(1) from None
