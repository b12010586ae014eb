"""The built-in templates: every one renders, is well formed, escapes user input, and
follows the locale rules; ``otpd render-template`` previews them."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from email import message_from_bytes, policy
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from otpd.cli import main
from otpd.config import EmailConfig, ProductConfig
from otpd.errors import ConfigError, ValidationError
from otpd.models import Channel, Message
from otpd.providers.mime import build_email
from otpd.templating import BUILTIN_TEMPLATES, TemplateRenderer

LINK = "https://app.example.com/verify-email?token=0123456789abcdef01234567.AbC-_xyz"

# Each template with a realistic context: what otpd itself passes (links) or what a caller
# of POST /v1/messages is expected to pass (security notices).
SAMPLES: dict[str, dict[str, Any]] = {
    "otp_code": {"code": "042917", "ttl_minutes": 10},
    "email_verification": {"name": "Ada", "link": LINK, "ttl_minutes": 1440},
    "verification_reminder": {"name": "Ada", "link": LINK, "ttl_minutes": 1440},
    "password_reset": {
        "name": "Ada",
        "link": LINK,
        "ttl_minutes": 60,
        "client_ip": "203.0.113.9",
        "user_agent": "Firefox 140 on Linux",
    },
    "password_changed": {
        "name": "Ada",
        "changed_at": "22 Nov 2026, 14:03 UTC",
        "client_ip": "203.0.113.9",
        "user_agent": "Firefox 140 on Linux",
        "secure_account_url": "https://app.example.com/security",
    },
    "new_login_alert": {
        "name": "Ada",
        "login_at": "22 Nov 2026, 14:03 UTC",
        "location": "Berlin, Germany",
        "client_ip": "203.0.113.9",
        "user_agent": "Safari on iPhone",
        "secure_account_url": "https://app.example.com/security",
    },
    "account_deletion_requested": {
        "name": "Ada",
        "deletion_date": "6 Dec 2026",
        "cancel_url": "https://app.example.com/account/keep",
    },
    "account_deletion_cancelled": {"name": "Ada"},
    "waitlist_approved": {
        "name": "Ada",
        "signup_url": "https://app.example.com/join?invite=abc",
        "expires_on": "6 Dec 2026",
    },
    "totp_enabled": {"name": "Ada", "changed_at": "2026-11-22T14:03:00Z"},
    "totp_disabled": {"name": "Ada", "changed_at": "2026-11-22T14:03:00Z"},
}
# The least each template needs: everything else is optional.
REQUIRED: dict[str, set[str]] = {
    "otp_code": {"code", "ttl_minutes"},
    "email_verification": {"link", "ttl_minutes"},
    "verification_reminder": {"link", "ttl_minutes"},
    "password_reset": {"link", "ttl_minutes"},
    "password_changed": set(),
    "new_login_alert": set(),
    "account_deletion_requested": {"deletion_date"},
    "account_deletion_cancelled": set(),
    "waitlist_approved": {"signup_url"},
    "totp_enabled": set(),
    "totp_disabled": set(),
}
# Every locale directory of the built-ins, and English (the top level).
LOCALES: list[str | None] = [
    None,
    *sorted(p.name for p in BUILTIN_TEMPLATES.iterdir() if p.is_dir() and p.name[0] != "_"),
]
XSS = '<script>alert("x")</script>'
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}

PRODUCT = ProductConfig(
    name="Acme",
    logo_url="https://cdn.example.com/logo.png",
    footer="Acme Ltd, 1 Example Street, Springfield",
    support_email="help@example.com",
)


@pytest.fixture
def renderer() -> TemplateRenderer:
    return TemplateRenderer(PRODUCT)


class BalanceChecker(HTMLParser):
    """Fails on any end tag that does not close the innermost open element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.problems.append(f"<{tag} /> is not a void element")

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()


def assert_well_formed(html: str) -> None:
    checker = BalanceChecker()
    checker.feed(html)
    checker.close()
    assert checker.problems == []
    assert checker.stack == [], f"unclosed: {checker.stack}"
    # Stricter: the templates are XHTML-clean, so an XML parser accepts them as well.
    xml = html.split("\n", 1)[1] if html.startswith("<!DOCTYPE") else html
    ET.fromstring(xml)  # noqa: S314 - our own rendered output, no external entities


def test_the_template_set_is_complete() -> None:
    names = {p.name.split(".")[0] for p in BUILTIN_TEMPLATES.glob("*.subject.j2")}
    assert names == set(SAMPLES)
    for name in SAMPLES:
        for kind in ("subject", "txt", "html"):
            assert (BUILTIN_TEMPLATES / f"{name}.{kind}.j2").is_file()


@pytest.mark.parametrize("name", sorted(SAMPLES))
async def test_every_template_renders_subject_text_and_html(
    renderer: TemplateRenderer, name: str
) -> None:
    email = await renderer.render_email(name, SAMPLES[name])
    assert email.subject
    assert "\n" not in email.subject
    assert "Acme" in email.subject
    assert email.text.startswith(("Hi Ada,", "Your Acme"))
    assert "Acme Ltd, 1 Example Street, Springfield" in email.text
    assert "{{" not in email.text + email.html
    for value in SAMPLES[name].values():
        if isinstance(value, str) and value != "Ada":
            assert value in email.text
    assert_well_formed(email.html)
    assert '<html lang="en"' in email.html


@pytest.mark.parametrize("name", sorted(SAMPLES))
async def test_every_template_renders_with_only_its_required_context(
    renderer: TemplateRenderer, name: str
) -> None:
    context = {k: v for k, v in SAMPLES[name].items() if k in REQUIRED[name]}
    email = await renderer.render_email(name, context)
    assert_well_formed(email.html)
    assert "Hi," in email.text or name == "otp_code"


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize(
    ("name", "missing"), sorted((n, key) for n, keys in REQUIRED.items() for key in keys)
)
async def test_a_missing_required_value_is_a_validation_error_naming_the_key(
    renderer: TemplateRenderer, name: str, missing: str, locale: str | None
) -> None:
    context = {k: v for k, v in SAMPLES[name].items() if k != missing}
    with pytest.raises(ValidationError) as info:
        await renderer.render_email(name, context, locale)
    expected = f'template {name} needs the context key "{missing}"'
    assert info.value.message == expected
    assert info.value.fields == {"context": expected}
    if name == "otp_code":
        with pytest.raises(ValidationError) as sms:
            await renderer.render_sms(name, context, locale)
        assert sms.value.message == expected


async def test_a_loop_over_a_missing_key_names_the_key_too(tmp_path: Path) -> None:
    # StrictUndefined alone lets an async {% for %} over a missing name iterate nothing
    (tmp_path / "digest.sms.j2").write_text("{% for item in items %}{{ item }} {% endfor %}")
    renderer = TemplateRenderer(PRODUCT, str(tmp_path))
    assert await renderer.render_sms("digest", {"items": ["a", "b"]}) == "a b"
    with pytest.raises(ValidationError) as info:
        await renderer.render_sms("digest", {})
    assert info.value.message == 'template digest needs the context key "items"'


async def test_a_missing_attribute_of_a_context_value_keeps_jinjas_explanation(
    tmp_path: Path,
) -> None:
    (tmp_path / "hello.sms.j2").write_text("Hi {{ user.first_name }}")
    renderer = TemplateRenderer(PRODUCT, str(tmp_path))
    assert await renderer.render_sms("hello", {"user": {"first_name": "Ada"}}) == "Hi Ada"
    with pytest.raises(ValidationError) as info:
        await renderer.render_sms("hello", {"user": {}})
    assert info.value.message == (
        "template hello could not be rendered: 'dict object' has no attribute 'first_name'"
    )
    with pytest.raises(ValidationError) as missing:
        await renderer.render_sms("hello", {})
    assert missing.value.message == 'template hello needs the context key "user"'


@pytest.mark.parametrize("name", sorted(SAMPLES))
async def test_user_input_is_escaped_in_html_and_kept_verbatim_in_text(
    renderer: TemplateRenderer, name: str
) -> None:
    context = {
        k: (XSS if isinstance(v, str) and not v.startswith("https://") else v)
        for k, v in SAMPLES[name].items()
    }
    context["name"] = XSS
    email = await renderer.render_email(name, context)
    assert "<script" not in email.html
    assert "&lt;script&gt;" in email.html or name == "otp_code"
    assert_well_formed(email.html)
    if name != "otp_code":
        assert XSS in email.text


async def test_links_cannot_break_out_of_their_attribute(renderer: TemplateRenderer) -> None:
    hostile = 'https://x.example/"><script>alert(1)</script>'
    with pytest.raises(ValidationError) as info:
        await renderer.render_email("waitlist_approved", {"signup_url": hostile})
    assert set(info.value.fields) == {"context.signup_url"}
    fine = "https://x.example/join?a=1&b=<2>".replace("<2>", "2")
    email = await renderer.render_email("waitlist_approved", {"signup_url": fine})
    assert 'href="https://x.example/join?a=1&amp;b=2"' in email.html
    assert_well_formed(email.html)


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        " javascript:alert(1)",
        "data:text/html,<b>x</b>",
        "vbscript:msgbox",
        "//evil.example/x",
        "/relative/path",
        "https://",
        "https:///nohost",
        "https://exa mple.com/",
        "https://example.com/\u0000",
        "mailto:a@example.com",
        5,
    ],
)
async def test_url_context_values_must_be_absolute_web_urls(
    renderer: TemplateRenderer, url: object
) -> None:
    for key in ("signup_url", "link", "url"):
        with pytest.raises(ValidationError) as info:
            await renderer.render_email(
                "waitlist_approved", {"signup_url": "https://ok.example", key: url}
            )
        assert f"context.{key}" in info.value.fields


async def test_http_links_are_for_dev_only() -> None:
    context = {"signup_url": "http://localhost:3000/join"}
    dev = TemplateRenderer(ProductConfig(), allow_http=True)
    assert (
        "http://localhost:3000/join" in (await dev.render_email("waitlist_approved", context)).html
    )
    production = TemplateRenderer(ProductConfig(), allow_http=False)
    with pytest.raises(ValidationError):
        await production.render_email("waitlist_approved", context)


async def test_layout_shows_product_name_logo_footer_and_support(
    renderer: TemplateRenderer,
) -> None:
    email = await renderer.render_email("password_changed", SAMPLES["password_changed"])
    assert '<img class="logo" src="https://cdn.example.com/logo.png" alt="Acme"' in email.html
    assert "Acme Ltd, 1 Example Street, Springfield" in email.html
    assert 'href="mailto:help@example.com"' in email.html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1" />' in email.html
    assert "@media (max-width: 600px)" in email.html
    plain = TemplateRenderer(ProductConfig(name="Plain"))
    bare = await plain.render_email("password_changed", {})
    assert "<img" not in bare.html
    assert '<span class="brand-name">Plain</span>' in bare.html
    assert "mailto:" not in bare.html


async def test_reset_email_lists_only_the_request_details_it_has(
    renderer: TemplateRenderer,
) -> None:
    full = await renderer.render_email("password_reset", SAMPLES["password_reset"])
    assert "IP address:   203.0.113.9" in full.text
    assert '<th scope="row">Device</th><td>Firefox 140 on Linux</td>' in full.html
    bare = await renderer.render_email("password_reset", {"link": LINK, "ttl_minutes": 60})
    assert "IP address" not in bare.text + bare.html
    assert "came from" not in bare.text


@pytest.mark.parametrize(
    ("minutes", "english", "german"),
    [
        (1, "1 minute", "1 Minute"),
        (30, "30 minutes", "30 Minuten"),
        (60, "1 hour", "1 Stunde"),
        (1440, "24 hours", "24 Stunden"),
        (90, "90 minutes", "90 Minuten"),
    ],
)
async def test_expiry_is_worded_in_minutes_or_hours(
    renderer: TemplateRenderer, minutes: int, english: str, german: str
) -> None:
    context = {"link": LINK, "ttl_minutes": minutes}
    en = await renderer.render_email("password_reset", context)
    de = await renderer.render_email("password_reset", context, "de")
    assert f"expires in {english} " in en.text
    assert f"expires in {english} " in en.html
    assert f"ist {german} lang" in de.text
    assert f"ist {german} lang" in de.html


# ---------------------------------------------------------------- signature


def signature_of(text: str) -> list[str]:
    """The lines after the separator, which must be exactly one "-- " line."""
    lines = text.split("\n")
    assert lines.count("-- ") == 1, lines
    assert "--" not in lines
    return lines[lines.index("-- ") + 1 :]


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("name", sorted(SAMPLES))
async def test_plain_text_signature_separator_is_dash_dash_space(
    renderer: TemplateRenderer, name: str, locale: str | None
) -> None:
    required = {k: v for k, v in SAMPLES[name].items() if k in REQUIRED[name]}
    for context in (SAMPLES[name], required):
        text = (await renderer.render_email(name, context, locale)).text
        assert "\n\n-- \nAcme\nAcme Ltd, 1 Example Street, Springfield\n" in text
        assert signature_of(text)[:2] == ["Acme", "Acme Ltd, 1 Example Street, Springfield"]


async def test_signature_separator_keeps_its_space_through_the_mime_encoding(
    renderer: TemplateRenderer,
) -> None:
    email = await renderer.render_email("otp_code", SAMPLES["otp_code"])
    message = Message(Channel.EMAIL, "ada@example.com", email.text, email.subject, email.html)
    built = build_email(message, EmailConfig(from_address="otp@example.com"))
    parsed = message_from_bytes(built.data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    part = parsed.get_body(("plain",))
    assert part is not None
    assert signature_of(part.get_content().replace("\r\n", "\n"))[0] == "Acme"


# ---------------------------------------------------------------- product names

PRODUCT_NAMES = ["Example", "Acme", "Umbrella Corp", "Ökobank", "X"]


def readable_text(html: str) -> str:
    html = re.sub(r"<(style|title)\b.*?</\1>", " ", html, flags=re.DOTALL)
    return re.sub(r"<[^>]+>", " ", html)


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("product_name", PRODUCT_NAMES)
async def test_no_sentence_puts_an_article_or_a_compound_on_the_product_name(
    product_name: str, locale: str | None
) -> None:
    """No a/an can suit every name ("a Ökobank", "a X"): sentences say "your Example
    account" or "sign up for Example". German says "Konto bei Umbrella Corp", never the
    compound "Umbrella Corp-Konto", and needs no article before the name either."""
    product = ProductConfig(
        name=product_name, footer="1 Main Street, Springfield", support_email="help@example.com"
    )
    renderer = TemplateRenderer(product)
    outputs = []
    for name in sorted(SAMPLES):
        email = await renderer.render_email(name, SAMPLES[name], locale)
        outputs += [email.subject, email.text, readable_text(email.html)]
    outputs.append(await renderer.render_sms("otp_code", SAMPLES["otp_code"], locale))
    page = await renderer.render_page(
        "_hosted/verify_email", {"token": "t", "action": "/l", "failure_url": "", "style": ""}
    )
    outputs.append(readable_text(page))
    product_name_at = re.escape(product_name) + r"(?![\w])"
    article = re.compile(
        r"(?<![\w])(?i:an?|ein|eine[mnrs]?|kein|keine[mnrs]?)\s+" + product_name_at
    )
    compound = re.compile(r"(?<![\w-])" + re.escape(product_name) + r"-\w")
    for output in outputs:
        flat = " ".join(output.split())
        assert product_name in flat
        assert not article.search(flat), flat
        assert not compound.search(flat), flat


# ---------------------------------------------------------------- locale


@pytest.mark.parametrize("name", ["email_verification", "password_reset"])
@pytest.mark.parametrize("locale", ["de", "de-AT", "de_CH"])
async def test_german_directory_overrides_the_translated_templates(
    renderer: TemplateRenderer, name: str, locale: str
) -> None:
    email = await renderer.render_email(name, SAMPLES[name], locale)
    assert email.text.startswith("Hallo Ada,")
    assert "Acme" in email.subject
    assert email.subject != (await renderer.render_email(name, SAMPLES[name])).subject
    assert '<html lang="de"' in email.html
    assert "Fragen? Schreiben Sie an" in email.text
    assert "Fragen? Schreiben Sie an" in email.html
    assert "Questions?" not in email.text + email.html
    assert_well_formed(email.html)


async def test_german_templates_escape_user_input_too(renderer: TemplateRenderer) -> None:
    email = await renderer.render_email(
        "password_reset", {**SAMPLES["password_reset"], "name": XSS}, "de"
    )
    assert "<script" not in email.html
    assert "Hallo &lt;script&gt;" in email.html


async def test_untranslated_template_in_german_falls_back_to_english(
    renderer: TemplateRenderer,
) -> None:
    email = await renderer.render_email("new_login_alert", SAMPLES["new_login_alert"], "de")
    assert email.text.startswith("Hi Ada,")


@pytest.mark.parametrize("locale", ["fr", "pt-BR", "zz", None])
async def test_unknown_locale_falls_back_to_english(
    renderer: TemplateRenderer, locale: str | None
) -> None:
    email = await renderer.render_email("email_verification", SAMPLES["email_verification"], locale)
    assert email.subject == "Confirm your email address for Acme"
    assert email.text.startswith("Hi Ada,")
    assert '<html lang="en"' in email.html


async def test_operator_directory_overrides_a_builtin_template(tmp_path: Path) -> None:
    (tmp_path / "de").mkdir()
    (tmp_path / "password_changed.subject.j2").write_text("Custom: {{ product.name }}\n")
    (tmp_path / "de" / "password_changed.subject.j2").write_text("Angepasst\n")
    renderer = TemplateRenderer(PRODUCT, str(tmp_path))
    assert (await renderer.render_email("password_changed", {})).subject == "Custom: Acme"
    assert (await renderer.render_email("password_changed", {}, "de")).subject == "Angepasst"
    # the rest of the set still comes from the built-ins
    assert (await renderer.render_email("password_changed", {})).text.startswith("Hi,")


async def test_hosted_page_template_is_well_formed_and_escapes_the_token(
    renderer: TemplateRenderer,
) -> None:
    page = await renderer.render_page(
        "_hosted/verify_email",
        {"token": '"><script>', "action": "/l/verify-email", "failure_url": "", "style": ""},
    )
    assert_well_formed(page)
    assert "<script" not in page
    assert '<button type="submit" id="confirm">Confirm email address</button>' in page


# ---------------------------------------------------------------- otpd render-template


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in __import__("os").environ if n.startswith("OTPD_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "otpd.toml"
    path.write_text('[product]\nname = "Acme"\nsupport_email = "help@example.com"\n')
    return path


def test_render_template_prints_html_by_default(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "render-template",
                "password_reset",
                "--config",
                str(config_file),
                "--context",
                f'{{"name": "Ada", "link": "{LINK}", "ttl_minutes": 60}}',
            ]
        )
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("<!DOCTYPE html>")
    assert "Hi Ada," in out
    assert_well_formed(out)


@pytest.mark.parametrize(
    ("fmt", "locale", "expected"),
    [
        ("text", None, "Hi Ada,\n"),
        ("subject", None, "Reset your Acme password\n"),
        ("subject", "de", "Passwort für Acme zurücksetzen\n"),
        ("text", "fr", "Hi Ada,\n"),
    ],
)
def test_render_template_prints_text_or_subject_in_a_locale(
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
    locale: str | None,
    expected: str,
) -> None:
    argv = [
        "render-template",
        "password_reset",
        "--config",
        str(config_file),
        "--format",
        fmt,
        "--context",
        f'{{"name": "Ada", "link": "{LINK}", "ttl_minutes": 60}}',
    ]
    if locale:
        argv += ["--locale", locale]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(expected) if fmt == "text" else out == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown template 'nope'"),
        (["password_reset", "--context", "{"], "--context is not valid JSON"),
        (["password_reset", "--context", "[1]"], "--context must be a JSON object"),
        (["password_reset"], 'needs the context key "link"'),
        (["otp_code", "--locale", "!!"], "a language tag"),
    ],
)
def test_render_template_explains_mistakes_and_exits_2(
    config_file: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["render-template", *args, "--config", str(config_file)])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


async def test_templates_are_loaded_once_and_cached(tmp_path: Path) -> None:
    from otpd.config import ProductConfig
    from otpd.templating import TemplateRenderer

    (tmp_path / "otp_code.sms.j2").write_text("first {{ code }}")
    renderer = TemplateRenderer(ProductConfig(), str(tmp_path))
    assert await renderer.render_sms("otp_code", {"code": "1", "ttl_minutes": 1}) == "first 1"
    (tmp_path / "otp_code.sms.j2").write_text("second {{ code }}")
    assert await renderer.render_sms("otp_code", {"code": "2", "ttl_minutes": 1}) == "first 2"


def test_a_template_with_a_syntax_error_fails_the_start_naming_file_and_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "otp_code.txt.j2").write_text("Your code:\n{{ code \n")
    renderer = TemplateRenderer(PRODUCT, str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        renderer.preload()
    assert str(caught.value).startswith("email.templates_dir: otp_code.txt.j2 line 2: ")


@pytest.mark.parametrize("locale", [None, "de", "de-AT", "pt-BR", "fr"])
async def test_a_codes_messages_put_in_place_read_exactly_as_rendered(
    renderer: TemplateRenderer, locale: str | None
) -> None:
    plain = TemplateRenderer(PRODUCT, str(BUILTIN_TEMPLATES))  # an operator's dir: no stand-in
    for code in ("042917", "000000", "999999", "12345678"):
        context = {"ttl_minutes": 10}
        fast = await renderer.render_email("otp_code", context, locale, code=code)
        slow = await plain.render_email("otp_code", {**context, "code": code}, locale)
        assert fast == slow
        assert code in fast.text and code in fast.html
        sms = await renderer.render_sms("otp_code", context, locale, code=code)
        assert sms == await plain.render_sms("otp_code", {**context, "code": code}, locale)
    assert renderer._skeletons and not plain._skeletons


async def test_a_template_that_does_more_with_the_code_than_print_it_is_rendered_each_time(
    tmp_path: Path,
) -> None:
    (tmp_path / "grouped.sms.j2").write_text("{{ code[:3] }} {{ code[3:] }} ({{ code | int }})")
    (tmp_path / "shown.sms.j2").write_text("Code {{ code }}, again {{ code }}")
    renderer = TemplateRenderer(PRODUCT, str(tmp_path))
    renderer._builtin_only = True  # as if it were built in: the stand-ins must find it out
    assert await renderer.render_sms("grouped", {}, code="042917") == "042 917 (42917)"
    assert await renderer.render_sms("grouped", {}, code="123456") == "123 456 (123456)"
    assert await renderer.render_sms("shown", {}, code="042917") == "Code 042917, again 042917"
    kinds = {key[0]: skeleton for key, skeleton in renderer._skeletons.items()}
    assert kinds["grouped"] == ("", "") and kinds["shown"] != ("", "")


async def test_the_kept_skeletons_are_bounded_whatever_locales_callers_send(
    renderer: TemplateRenderer,
) -> None:
    for n in range(300):
        sms = await renderer.render_sms("otp_code", {"ttl_minutes": 10}, f"x{n}", code="042917")
        assert "042917" in sms
    assert len(renderer._skeletons) == 256
