"""The HTTP JSON API over the services."""

from otpd.api.server import HttpServer, create_app

__all__ = ["HttpServer", "create_app"]
