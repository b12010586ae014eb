"""Command line: ``otpd serve``, ``otpd check-config``, ``otpd render-template``. The only
place that owns ``asyncio.run``, signal handling and logging setup."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
from collections.abc import Sequence

import structlog

from otpd.config import Config, load_config, masked_config
from otpd.errors import ConfigError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otpd", description="OTP and transactional messaging daemon"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon")
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
    for p in (serve, check, render):
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


async def _serve(config: Config) -> None:
    from otpd.api import HttpServer

    log = structlog.get_logger("otpd")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with HttpServer(config) as server:
        # Everything made at start-up lives as long as the process: keep it out of the
        # collector's full passes, which otherwise pause the loop for tens of milliseconds.
        gc.freeze()
        log.info(
            "otpd.listening",
            url=server.url,
            env=config.server.env,
            store=config.store.backend,
            email_providers=list(config.email.providers),
            sms_providers=list(config.sms.providers),
            outbox=config.outbox.dir
            if {"outbox", "console"} & {*config.email.providers, *config.sms.providers}
            else None,
        )
        await stop.wait()
        log.info("otpd.stopping")
    log.info("otpd.stopped")


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    config = _load(args.config)
    if args.command == "render-template":
        raise SystemExit(_render_template(config, args.name, args.context, args.fmt, args.locale))
    if args.command == "check-config":
        print(json.dumps(masked_config(config), indent=2))
        print("otpd: configuration is valid", file=sys.stderr)
        return
    from otpd.logs import configure_logging

    fmt = config.logging.format
    if fmt == "auto":
        fmt = "json" if config.server.env == "production" else "console"
    configure_logging(config.logging.level, fmt)
    try:
        asyncio.run(_serve(config))
    except (ConfigError, RuntimeError, OSError) as exc:
        structlog.get_logger("otpd").error("otpd.failed_to_start", error=str(exc))
        raise SystemExit(1) from None
