"""Fixtures for the provider tests."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from otpd.providers.session import SharedSession


@pytest.fixture
async def http() -> AsyncIterator[SharedSession]:
    """The shared HTTP session the REST providers send through, open for one test."""
    async with SharedSession() as shared:
        yield shared


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A private CA that test servers' certificates are issued by."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 and localhost, issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> str:
    """``ca``'s certificate as a PEM file, for ``smtp.ca_file``."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(path)
    return str(path)
