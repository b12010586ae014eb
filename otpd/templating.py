"""Jinja2 rendering of emails and SMS: autoescaped HTML, plain text, locale overrides.

A template ``NAME`` is a set of files: ``NAME.subject.j2``, ``NAME.txt.j2`` and
``NAME.html.j2`` for email, ``NAME.sms.j2`` for SMS. A locale directory (``pt-BR/``,
``de/``) may override any of them; operators override built-ins by name from
``email.templates_dir``. Lookup order: operator locale, built-in locale, operator,
built-in; unknown locales fall back to English (the top level).

A code's messages (``render_email(..., code=...)``) are rendered once per template, locale
and context with a stand-in for the code, and the code is put in place of it: one render
of an email costs some 70 us, putting a code in a few. Only the built-in templates are
rendered so (an operator's template may do anything with the code), only where two
renders with different stand-ins differ in the stand-in alone, and at most
``_SKELETONS`` of them are kept (locales are the caller's).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.utils import missing

from otpd.config import ProductConfig
from otpd.config.checks import Problem
from otpd.errors import ConfigError, ValidationError
from otpd.validation import check_template_urls

__all__ = ["BUILTIN_TEMPLATES", "MissingContextKeyError", "RenderedEmail", "TemplateRenderer"]

BUILTIN_TEMPLATES = Path(__file__).parent / "templates"

# Names the renderer or Jinja itself provide: a caller's context may not shadow them.
_RESERVED = frozenset({"self", "locale", "product", "loop", "super", "caller", "varargs", "kwargs"})
_SKELETONS = 256
_UNFIT = ("", "")  # the skeleton of a template that does more with the code than print it


def _stand_ins(length: int) -> tuple[str, str]:
    """Two random digit strings of ``length`` that differ in every place."""
    first = "".join(secrets.choice("0123456789") for _ in range(length))
    second = "".join(str((int(d) + 1 + secrets.randbelow(9)) % 10) for d in first)
    return first, second


class MissingContextKeyError(jinja2.UndefinedError):
    """A template used a top-level name that neither the context nor otpd provides."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key!r} is undefined")
        self.key = key


class _ContextUndefined(jinja2.StrictUndefined):
    """``StrictUndefined`` whose error carries the missing context key, so the message can
    name it without parsing Jinja's text. A missing attribute of a value, a macro argument
    or a name Jinja explains itself (a hint) keeps Jinja's own error."""

    __slots__ = ()
    # StrictUndefined leaves Undefined's __aiter__ in place, so in an async environment a
    # ``{% for %}`` over a missing key would iterate nothing instead of failing.
    __aiter__ = jinja2.Undefined._fail_with_undefined_error

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[jinja2.TemplateRuntimeError] = jinja2.UndefinedError,
    ) -> None:
        if hint is None and obj is missing and name is not None:
            exc = MissingContextKeyError
        super().__init__(hint, obj, name, exc)

    @property
    def _undefined_message(self) -> str:
        # Jinja raises ``self._undefined_exception(self._undefined_message)``: hand the
        # key itself to MissingContextKeyError.
        if self._undefined_exception is MissingContextKeyError and self._undefined_name:
            return self._undefined_name
        return super()._undefined_message


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


class TemplateRenderer:
    def __init__(
        self, product: ProductConfig, templates_dir: str = "", *, allow_http: bool = True
    ) -> None:
        """``allow_http``: whether URLs in a context may be ``http://`` (dev), not only
        ``https://``."""
        self.allow_http = allow_http
        # (name, kind, locale, context, code length) -> (stand-in, rendered) or _UNFIT
        self._skeletons: dict[tuple[Any, ...], tuple[str, str]] = {}
        self._builtin_only = not templates_dir
        loaders: list[jinja2.BaseLoader] = []
        if templates_dir:
            loaders.append(jinja2.FileSystemLoader(templates_dir))
        loaders.append(jinja2.FileSystemLoader(BUILTIN_TEMPLATES))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            # "html.j2" must be listed: select_autoescape matches on the final suffix.
            autoescape=jinja2.select_autoescape(["html", "html.j2"], default_for_string=False),
            undefined=_ContextUndefined,
            # nothing a template uses awaits: rendering synchronously saves the
            # coroutine machinery of every block and loop (a tenth of an issue's CPU)
            enable_async=False,
            auto_reload=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.globals["product"] = product

    def preload(self) -> int:
        """Compile every template now (start-up), so no request pays a first compile of
        tens of milliseconds on the event loop. Returns how many were compiled."""
        names = [n for n in self.env.list_templates() if n.endswith(".j2")]
        for name in names:
            try:
                self.env.get_template(name)
            except jinja2.TemplateSyntaxError as exc:
                # the one start-up line names the file and the line, not just Jinja's words
                problem = Problem("email.templates_dir", f"{name} line {exc.lineno}: {exc.message}")
                raise ConfigError.from_problems([problem]) from None
        return len(names)

    def exists(self, name: str, kind: str = "html") -> bool:
        try:
            self.env.get_template(f"{name}.{kind}.j2")
        except (jinja2.TemplateNotFound, ValueError):
            return False
        return True

    def _select(self, name: str, kind: str, locale: str | None) -> jinja2.Template:
        candidates = [f"{name}.{kind}.j2"]
        if locale:
            locale = locale.replace("_", "-")
            lang = locale.split("-")[0]
            candidates[:0] = [f"{locale}/{name}.{kind}.j2", f"{lang}/{name}.{kind}.j2"]
        try:
            return self.env.select_template(candidates)
        except jinja2.TemplatesNotFound:
            raise ValidationError.field("template", f"unknown template {name!r}") from None

    async def _render(
        self, name: str, kind: str, context: dict[str, Any], locale: str | None
    ) -> str:
        bad = sorted(k for k in context if not k.isidentifier() or k in _RESERVED)
        if bad:
            raise ValidationError.field("context", f"{bad[0]!r} is reserved or not a name")
        check_template_urls(context, allow_http=self.allow_http)
        template = self._select(name, kind, locale)
        try:
            return template.render({**context, "locale": locale or "en"})
        except MissingContextKeyError as exc:
            problem = f'template {name} needs the context key "{exc.key}"'
            raise ValidationError(problem, fields={"context": problem}) from None
        except jinja2.UndefinedError as exc:
            # a missing attribute of a context value, a macro argument left out: Jinja's words
            problem = f"template {name} could not be rendered: {exc.message}"
            raise ValidationError(problem, fields={"context": problem}) from None

    async def _render_code(
        self, name: str, kind: str, context: dict[str, Any], locale: str | None, code: str | None
    ) -> str:
        """:meth:`_render` of ``context`` with ``code`` as ``code`` (see the module)."""
        if code is None:
            return await self._render(name, kind, context, locale)
        full = {**context, "code": code}
        if not (self._builtin_only and code.isdigit()):
            return await self._render(name, kind, full, locale)
        try:
            key = (name, kind, locale, tuple(sorted(context.items())), len(code))
            hash(key)
        except TypeError:  # a context value that cannot be a key
            return await self._render(name, kind, full, locale)
        skeleton = self._skeletons.get(key)
        if skeleton is None:
            skeleton = await self._skeleton(name, kind, context, locale, len(code))
            if len(self._skeletons) < _SKELETONS:
                self._skeletons[key] = skeleton
        if skeleton is _UNFIT:
            return await self._render(name, kind, full, locale)
        stand_in, rendered = skeleton
        return rendered.replace(stand_in, code)

    async def _skeleton(
        self, name: str, kind: str, context: dict[str, Any], locale: str | None, length: int
    ) -> tuple[str, str]:
        """``name`` rendered with a stand-in for the code, or _UNFIT when a second stand-in
        shows the template doing more with the code than printing it."""
        first, second = _stand_ins(length)
        one = await self._render(name, kind, {**context, "code": first}, locale)
        two = await self._render(name, kind, {**context, "code": second}, locale)
        if one.count(first) < 1 or one.count(first) != two.count(second):
            return _UNFIT
        if one.replace(first, second) != two:
            return _UNFIT
        return first, one

    async def render_email(
        self,
        name: str,
        context: dict[str, Any],
        locale: str | None = None,
        *,
        code: str | None = None,
    ) -> RenderedEmail:
        """The subject, text and HTML of ``name``; ``code``, when given, is the context's
        ``code`` (a code's messages: see the module)."""
        subject = await self._render_code(name, "subject", context, locale, code)
        text = await self._render_code(name, "txt", context, locale, code)
        html = await self._render_code(name, "html", context, locale, code)
        return RenderedEmail(" ".join(subject.split()), text, html)

    async def render_page(
        self, name: str, context: dict[str, Any], locale: str | None = None
    ) -> str:
        """A web page otpd serves itself (``NAME.html.j2``), such as the hosted link page."""
        return await self._render(name, "html", context, locale)

    async def render_sms(
        self,
        name: str,
        context: dict[str, Any],
        locale: str | None = None,
        *,
        code: str | None = None,
    ) -> str:
        return (await self._render_code(name, "sms", context, locale, code)).strip()
