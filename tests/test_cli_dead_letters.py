"""``otpd dead-letters list|replay``: straight on the durable queue, picked up by a daemon."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from otpd.app import Otpd
from tests.conftest import TEST_SECRET, ConfigFactory
from tests.providers.smtp_server import SmtpSink


async def otpd_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "otpd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_list_and_replay_a_dead_letter_from_the_command_line(
    make_config: ConfigFactory, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    sink = await SmtpSink.start()
    try:
        smtp = {"host": "127.0.0.1", "port": sink.port, "tls": "none"}
        config = make_config("redis", email={"providers": ["smtp"]}, smtp=smtp)
        toml = tmp_path / "otpd.toml"
        toml.write_text(
            f'[store]\nbackend = "redis"\nredis_url = "{redis_url}"\nkey_prefix = "{key_prefix}"\n'
            f'[security]\nsecret_key = "{TEST_SECRET}"\n'
        )
        sink.handler.rcpt_reply = "550 5.1.1 no such user"
        async with Otpd(config) as daemon:
            accepted = await daemon.messages.send(
                channel="email", to="gone@example.com", subject="s", text="hello"
            )
            await daemon.dispatcher.wait_idle()

            code, out, err = await otpd_cli("dead-letters", "list", "--config", str(toml))
            assert code == 0, err
            [letter] = [json.loads(line) for line in out.splitlines()]
            assert (letter["task_id"], letter["recipient"]) == (
                accepted.task_id,
                "g***@example.com",
            )
            code, out, _ = await otpd_cli(
                "dead-letters", "list", "--channel", "sms", "--config", str(toml)
            )
            assert (code, out) == (0, "")

            sink.handler.rcpt_reply = None
            code, out, err = await otpd_cli(
                "dead-letters", "replay", accepted.task_id, "--config", str(toml)
            )
            assert (code, out.strip()) == (0, accepted.task_id), err
            await daemon.dispatcher.wait_idle()  # the running daemon delivers it
            record = await daemon.store.get_task(accepted.task_id)
            assert record is not None and record.status.value == "sent"
            assert len(sink.handler.messages) == 1

            code, _, err = await otpd_cli(
                "dead-letters", "replay", accepted.task_id, "--config", str(toml)
            )
            assert code == 1 and err.count("\n") == 1 and "no dead letter" in err
    finally:
        await sink.aclose()


async def test_the_in_process_queue_has_no_dead_letters_on_the_command_line(
    tmp_path: Path,
) -> None:
    toml = tmp_path / "otpd.toml"
    toml.write_text('[store]\nbackend = "memory"\n')
    code, out, err = await otpd_cli("dead-letters", "list", "--config", str(toml))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "GET /v1/dead-letters" in err
