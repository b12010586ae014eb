"""The floor of any Redis-backed verify: an aiohttp handler that parses a JSON body shaped
like otpd's verify body and runs exactly one EVALSHA on Redis.

    python bench/_floor.py --port P --redis redis://127.0.0.1:6379/0

Started by bench/fast_paths.py in its own process; serves ``POST /verify`` until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import redis.asyncio as aioredis
from aiohttp import web

__all__ = ["SCRIPT", "main"]

# Reads the record and counts the attempt, as a wrong code does in otpd's verify script.
SCRIPT = """
local rec = redis.call('HMGET', KEYS[1], 'code_hash', 'attempts')
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return attempts
"""

REDIS = web.AppKey("redis", aioredis.Redis)
SHA = web.AppKey("sha", str)


async def verify(request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise web.HTTPUnprocessableEntity() from None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("user_id"), str)
        or not isinstance(body.get("code"), str)
    ):
        raise web.HTTPUnprocessableEntity()
    key = f"floor:otp:{{u:{body['user_id']}}}:login"
    attempts = await request.app[REDIS].evalsha(request.app[SHA], 1, key)
    return web.json_response({"verified": False, "attempts": int(attempts)})


async def serve(port: int, redis_url: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The pool size of otpd's default store.max_connections.
    async with aioredis.Redis.from_url(redis_url, max_connections=50) as redis:
        app = web.Application()
        app[REDIS] = redis
        app[SHA] = await redis.script_load(SCRIPT)
        app.router.add_post("/verify", verify)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            await stop.wait()
        finally:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.redis))


if __name__ == "__main__":
    main()
