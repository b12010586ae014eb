"""The HTTP JSON API over the services: ``server`` (app factory, embeddable server),
``routes`` (OTP, messages, tasks, health), ``links``, ``hosted`` (the page people open),
``schemas`` (request bodies), ``middleware`` (errors and auth), ``protocol`` (the hardened
HTTP protocol: deadlines, connection cap, uniform parser errors)."""

from otpd.api.hosted import HOSTED_VERIFY_PATH
from otpd.api.protocol import OtpdAppRunner
from otpd.api.server import HttpServer, create_app

__all__ = ["HOSTED_VERIFY_PATH", "HttpServer", "OtpdAppRunner", "create_app"]
