"""Load shedding over HTTP: the server refuses with 503 + Retry-After, the client honours it.

A uvicorn server (a thread of this process, on a free 127.0.0.1 port) serves an
application that takes ``SERVICE_S`` per request, behind ``LoadShedding``: at most
``MAX_CONCURRENCY`` requests in the application, ``MAX_QUEUE`` more waiting, every
other one refused at once with ``503`` and a ``Retry-After`` computed from the
backlog and the observed completion rate.

The client fires a bounded burst at about three times what the server can serve.
Each request is one ``http_stream`` (the body read as demand allows) behind
``retry(MAX_ATTEMPTS, backoff=RetryAfter(cap=...))``: a refused request waits what
``Retry-After`` says, then tries again. The tables show how many requests the server
admitted at once, how many it shed, how many came back and succeeded, and the
latencies each group saw.

Run ``python examples/http_load_shedding.py`` (about 10 s) or ``--quick`` (about 5 s).
"""

# supports: --quick

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from reactive_bp import Flow, RetryExhaustedError
from reactive_bp.connectors.asgi import LoadShedding
from reactive_bp.connectors.http import HTTPStatusError, RetryAfter, http_stream

SERVICE_S = 0.2  # time the application spends on one request
MAX_CONCURRENCY = 4  # so it serves about 20 requests per second
MAX_QUEUE = 8
QUEUE_TIMEOUT_S = 0.5
OFFERED_RPS = 120.0  # the burst's arrival rate: about 6x capacity
MAX_ATTEMPTS = 5
RETRY_CAP_S = 2.0
BODY = b"x" * 16 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def api(scope: Scope, receive: Receive, send: Send) -> None:
    """The protected application: some work, then a 16 KiB body in four sends."""
    if scope["type"] != "http":
        return
    await asyncio.sleep(SERVICE_S)
    headers = [(b"content-type", b"application/octet-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for start in range(0, len(BODY), 4096):
        more = start + 4096 < len(BODY)
        await send(
            {"type": "http.response.body", "body": BODY[start : start + 4096], "more_body": more}
        )


class Server:
    """uvicorn in a thread, on a socket bound here to a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(
            app, lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="uvicorn"
        )

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10.0
        while not self.server.started:  # a readiness poll
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10.0)
        self.socket.close()


@dataclass
class Outcome:
    attempts: int
    ok: bool
    latency: float


class Client:
    """Sends one request per ``call``, retried after what each 503's Retry-After says."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url
        self.refusals = 0
        self.stated: list[float] = []

    def shed(self, error: Exception) -> bool:
        """The retry predicate: only refusals are retried (and counted)."""
        if isinstance(error, HTTPStatusError) and error.status_code in (429, 503):
            self.refusals += 1
            if error.retry_after is not None:
                self.stated.append(error.retry_after)
            return True
        return False

    async def call(self) -> Outcome:
        attempts = 0
        # Built here, on the loop: the retry re-subscribes it from its timer thread.
        request = http_stream(self.client, "GET", f"{self.url}/work", chunk_size=4096)

        def attempt() -> Flow[bytes]:
            nonlocal attempts
            attempts += 1
            return request  # each subscription sends the request again

        flow = Flow.defer(attempt).retry(
            MAX_ATTEMPTS, backoff=RetryAfter(cap=RETRY_CAP_S), retry_on=self.shed
        )
        started = time.monotonic()
        try:
            chunks = await flow.to_list_async()
            ok = b"".join(chunks) == BODY
        except RetryExhaustedError:
            ok = False
        return Outcome(attempts, ok, time.monotonic() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def latency_row(name: str, values: list[float]) -> str:
    if not values:
        return f"| {name} | 0 | - | - | - | - |"
    cells = [percentile(values, q) * 1000 for q in (0.5, 0.9, 0.99)] + [max(values) * 1000]
    return f"| {name} | {len(values)} | " + " | ".join(f"{c:.0f}" for c in cells) + " |"


async def burst(url: str, requests: int) -> tuple[list[Outcome], Client]:
    limits = httpx.Limits(max_connections=requests, max_keepalive_connections=requests)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(10.0, pool=None)) as http:
        client = Client(http, url)
        tasks = []
        for _ in range(requests):  # a bounded burst, at OFFERED_RPS
            tasks.append(asyncio.create_task(client.call()))
            await asyncio.sleep(1.0 / OFFERED_RPS)
        outcomes = await asyncio.gather(*tasks)
    return list(outcomes), client


def main(quick: bool) -> None:
    requests = 60 if quick else 200
    shedder = LoadShedding(
        api, max_concurrency=MAX_CONCURRENCY, max_queue=MAX_QUEUE, queue_timeout=QUEUE_TIMEOUT_S
    )
    with Server(shedder) as server:
        started = time.monotonic()
        outcomes, client = asyncio.run(burst(server.url, requests))
        wall = time.monotonic() - started
        stats = shedder.stats

    first_try = [o for o in outcomes if o.ok and o.attempts == 1]
    retried = [o for o in outcomes if o.attempts > 1]
    recovered = [o for o in retried if o.ok]
    gave_up = [o for o in outcomes if not o.ok]
    stated = sorted(set(client.stated))
    print(
        f"{requests} requests at {OFFERED_RPS:.0f}/s against {MAX_CONCURRENCY} slots x "
        f"{SERVICE_S * 1000:.0f} ms (+{MAX_QUEUE} queued), done in {wall:.1f} s\n"
    )
    print("| what | count |")
    print("| --- | ---: |")
    print(f"| requests in the burst | {requests} |")
    print(f"| admitted on the first try | {len(first_try)} |")
    print(f"| refusals sent (503 + Retry-After) | {stats.shed + stats.timed_out} |")
    print(f"| of which timed out in the queue | {stats.timed_out} |")
    print(f"| requests retried | {len(retried)} |")
    print(f"| succeeded after a retry | {len(recovered)} |")
    print(f"| gave up after {MAX_ATTEMPTS} attempts | {len(gave_up)} |")
    print(f"| admitted by the server in all | {stats.admitted} |")
    print(f"| Retry-After values seen (s) | {', '.join(f'{s:g}' for s in stated) or '-'} |")
    print()
    print("| latency (ms) | requests | p50 | p90 | p99 | max |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(latency_row("first try", [o.latency for o in first_try]))
    print(latency_row("after retries", [o.latency for o in recovered]))
    print(latency_row("all that succeeded", [o.latency for o in outcomes if o.ok]))

    # What the example shows, checked: every refusal the client saw was one the server
    # sent, every admitted request succeeded, and a client waited what the server asked
    # (Retry-After is whole seconds, at least 1) before coming back.
    if not stats.shed + stats.timed_out:
        print("\n(this machine was too slow to offer an overload: nothing was shed)")
    assert client.refusals == stats.shed + stats.timed_out
    assert stats.admitted == sum(o.ok for o in outcomes)
    assert all(o.latency >= 1.0 for o in recovered), "a retry waits Retry-After (>= 1 s)"


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
