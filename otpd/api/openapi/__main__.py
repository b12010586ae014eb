"""``python -m otpd.api.openapi > docs/openapi.json``: print the OpenAPI document."""

import sys

from otpd.api.openapi import render

sys.stdout.write(render())
