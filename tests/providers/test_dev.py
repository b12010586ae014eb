"""The dev outbox: each email is one complete ``.eml`` file, the same bytes a real provider
sends, written whole or not at all."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from otpd.errors import PermanentDeliveryError
from otpd.providers.dev import OutboxEmailProvider
from tests.providers.helpers import (
    MESSAGE,
    MSGID,
    SENDER,
    assert_hostile_email_arrived_as_text,
    hostile_message,
    hostile_sender,
    parse_email,
)


async def test_each_email_is_one_eml_file_named_in_the_result(tmp_path: Path) -> None:
    async with OutboxEmailProvider(tmp_path / "outbox", SENDER) as outbox:
        result = await outbox.send(MESSAGE)

    [path] = (tmp_path / "outbox").iterdir()
    assert result.provider == "outbox"
    assert result.message_id == path.name
    assert path.suffix == ".eml"
    assert "-otp_code-" in path.name
    msg = parse_email(path.read_bytes())
    assert msg["Subject"] == MESSAGE.subject
    assert msg["Reply-To"] == SENDER.reply_to
    assert MSGID.fullmatch(str(msg["Message-ID"]))


async def test_each_eml_is_marked_auto_submitted(tmp_path: Path) -> None:
    async with OutboxEmailProvider(tmp_path, SENDER) as outbox:
        await outbox.send(MESSAGE)
        await outbox.send(dataclasses.replace(MESSAGE, html=""))

    paths = sorted(tmp_path.iterdir())
    assert len(paths) == 2
    for path in paths:
        assert parse_email(path.read_bytes()).get_all("Auto-Submitted") == ["auto-generated"]


@pytest.mark.parametrize("html", [True, False], ids=["multipart", "text-only"])
async def test_encoded_words_in_subject_from_name_and_header_are_written_as_literal_text(
    tmp_path: Path, html: bool
) -> None:
    async with OutboxEmailProvider(tmp_path, hostile_sender()) as outbox:
        await outbox.send(hostile_message(html=html))

    [path] = tmp_path.iterdir()
    assert_hostile_email_arrived_as_text(path.read_bytes(), html=html)


async def test_a_message_that_cannot_be_written_is_permanent_and_leaves_no_file(
    tmp_path: Path,
) -> None:
    bad = dataclasses.replace(MESSAGE, to="jane.doe@example.com\r\nBcc: thief@evil.test")
    async with OutboxEmailProvider(tmp_path, SENDER) as outbox:
        with pytest.raises(PermanentDeliveryError) as caught:
            await outbox.send(bad)

    assert caught.value.provider == "outbox"
    assert "jane.doe" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
