"""reactive_bp.connectors.asgi: LoadShedding and the streaming responses.

Unit tests drive the middleware and the responses with fake ASGI callables on one
event loop (ordering by loop steps, never by sleeping); the end-to-end tests run
uvicorn on 127.0.0.1 (tests/net/conftest.py): an overload with and without
shedding (server in a child process), a slow streaming client (server in a
thread, so its counters and memory are this process's), disconnects and errors.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import pytest

from reactive_bp import BackpressureMeter, Flow, WaterMarks
from reactive_bp.connectors.asgi import (
    ASGIApp,
    ASGIMessage,
    LoadShedding,
    Receive,
    Scope,
    Send,
    ServerSentEvent,
    flow_response,
    ndjson_response,
    sse_response,
)
from reactive_bp.schedulers import ThreadPoolScheduler

httpx = pytest.importorskip("httpx", reason="the http extra: pip install 'reactive-bp[http]'")

pytestmark = pytest.mark.no_undeliverable

R = TypeVar("R")


def run(coroutine: Coroutine[Any, Any, R], timeout: float = 20.0) -> R:
    """Run one test scenario on a fresh loop, bounded in time."""

    async def bounded() -> R:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


async def settle(steps: int = 30) -> None:
    """Let every ready task run until it blocks (loop steps, not time)."""
    for _ in range(steps):
        await asyncio.sleep(0)


class FakeRequest:
    """One HTTP request as an ASGI server presents it: a scope, a receive, a send."""

    def __init__(
        self,
        path: str = "/",
        body: bytes = b"",
        *,
        headers: Iterable[tuple[bytes, bytes]] = (),
        kind: str = "http",
    ) -> None:
        self.scope: Scope = {"type": kind, "method": "GET", "path": path, "headers": list(headers)}
        self.inbox: asyncio.Queue[ASGIMessage] = asyncio.Queue()
        if kind == "http":
            self.inbox.put_nowait({"type": "http.request", "body": body, "more_body": False})
        self.sent: list[ASGIMessage] = []
        self.receives = 0

    async def receive(self) -> ASGIMessage:
        self.receives += 1
        return await self.inbox.get()

    async def send(self, message: ASGIMessage) -> None:
        self.sent.append(message)

    def disconnect(self) -> None:
        self.inbox.put_nowait({"type": "http.disconnect"})

    def call(self, app: ASGIApp) -> asyncio.Task[None]:
        async def call() -> None:
            await app(self.scope, self.receive, self.send)

        return asyncio.ensure_future(call())

    @property
    def status(self) -> int | None:
        for message in self.sent:
            if message["type"] == "http.response.start":
                status: int = message["status"]
                return status
        return None

    def header(self, name: bytes) -> bytes | None:
        for message in self.sent:
            if message["type"] == "http.response.start":
                for key, value in message["headers"]:
                    if key == name:
                        found: bytes = value
                        return found
        return None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


class HeldApp:
    """Records the order requests enter; holds each until released; ``/boom...`` raises."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.bodies: dict[str, bytes] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self.active = 0
        self.peak = 0

    def gate(self, path: str) -> asyncio.Event:
        return self._gates.setdefault(path, asyncio.Event())

    def release(self, path: str) -> None:
        self.gate(path).set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        self.entered.append(path)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if path.startswith("/boom"):
                raise RuntimeError(f"app failed on {path}")
            if scope["type"] == "http":
                message = await receive()
                self.bodies[path] = message.get("body", b"")
            await self.gate(path).wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok", "more_body": False})
        finally:
            self.active -= 1


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------
# LoadShedding: unit tests with a fake app
# ---------------------------------------------------------------------------------------


def test_waiters_enter_in_arrival_order_and_newcomers_do_not_overtake() -> None:
    async def scenario() -> None:
        app = HeldApp()
        shedding = LoadShedding(app, max_concurrency=1, max_queue=4, queue_timeout=60)
        tasks = {}
        for path in ("/a", "/b", "/c", "/d"):
            tasks[path] = FakeRequest(path).call(shedding)
            await settle()
        assert app.entered == ["/a"] and shedding.stats.queued_now == 3
        app.release("/a")
        # A newcomer arriving as the slot frees queues behind the waiters.
        tasks["/e"] = FakeRequest("/e").call(shedding)
        await settle()
        for path in ("/b", "/c", "/d", "/e"):
            assert app.entered[-1] == path, app.entered
            app.release(path)
            await settle()
        await asyncio.gather(*tasks.values())
        assert app.entered == ["/a", "/b", "/c", "/d", "/e"] and app.peak == 1
        stats = shedding.stats
        assert (stats.admitted, stats.completed, stats.in_flight, stats.queued_now) == (5, 5, 0, 0)
        assert stats.peak_queued == 3 and stats.shed == 0

    run(scenario())


def test_a_full_queue_refuses_at_once_with_the_status_and_retry_after() -> None:
    async def scenario() -> None:
        app = HeldApp()
        shedding = LoadShedding(app, max_concurrency=1, max_queue=1, queue_timeout=60, status=429)
        first, second, third = FakeRequest("/1"), FakeRequest("/2"), FakeRequest("/3")
        held = [first.call(shedding), second.call(shedding)]
        await settle()
        await third.call(shedding)  # refused without waiting
        assert third.status == 429 and "/3" not in app.entered
        retry_after = third.header(b"retry-after")
        assert retry_after is not None and int(retry_after) >= 1
        assert shedding.stats.shed == 1 and shedding.stats.queued_now == 1
        app.release("/1")
        app.release("/2")
        await asyncio.gather(*held)
        assert first.status == second.status == 200

    run(scenario())


def test_a_waiter_is_refused_after_queue_timeout() -> None:
    async def scenario() -> None:
        app = HeldApp()
        shedding = LoadShedding(app, max_concurrency=1, max_queue=2, queue_timeout=0.05)
        holder, waiter = FakeRequest("/hold"), FakeRequest("/wait")
        holding = holder.call(shedding)
        await settle()
        await waiter.call(shedding)  # returns once its wait timed out (the holder never ends)
        assert waiter.status == 503 and int(waiter.header(b"retry-after") or b"0") >= 1
        assert app.entered == ["/hold"]
        stats = shedding.stats
        assert (stats.timed_out, stats.queued_now, stats.in_flight) == (1, 0, 1)
        app.release("/hold")
        await holding
        assert shedding.stats.in_flight == 0

    run(scenario())


def test_bypass_paths_and_predicates_skip_the_limit() -> None:
    async def scenario(bypass: Any) -> None:
        app = HeldApp()
        shedding = LoadShedding(app, max_concurrency=1, max_queue=0, bypass=bypass)
        holding = FakeRequest("/work").call(shedding)
        await settle()
        health = FakeRequest("/healthz")
        app.release("/healthz")
        await health.call(shedding)
        assert health.status == 200
        refused = FakeRequest("/other")
        await refused.call(shedding)
        assert refused.status == 503
        stats = shedding.stats
        assert (stats.bypassed, stats.shed, stats.arrived) == (1, 1, 2)
        app.release("/work")
        await holding

    run(scenario({"/healthz"}))
    run(scenario(lambda path: path.startswith("/health")))


def test_an_app_exception_releases_the_slot_and_propagates() -> None:
    async def scenario() -> None:
        app = HeldApp()
        shedding = LoadShedding(app, max_concurrency=1, max_queue=1, queue_timeout=60)
        failing = FakeRequest("/boom").call(shedding)
        with pytest.raises(RuntimeError, match="app failed"):
            await failing
        assert shedding.stats.in_flight == 0 and shedding.stats.failed == 1
        after = FakeRequest("/after")
        app.release("/after")
        await after.call(shedding)  # would be shed (or wait forever) if the slot leaked
        assert after.status == 200 and shedding.stats.completed == 2

    run(scenario())


def test_an_app_exception_hands_the_slot_to_the_next_waiter() -> None:
    async def scenario() -> None:
        app = HeldApp()
        shedding = LoadShedding(app, max_concurrency=1, max_queue=1, queue_timeout=60)
        gate = asyncio.Event()

        async def fail_later(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["path"] == "/boom":
                await gate.wait()
                raise RuntimeError("late failure")
            await app(scope, receive, send)

        failing_app = LoadShedding(fail_later, max_concurrency=1, max_queue=1, queue_timeout=60)
        failing = FakeRequest("/boom").call(failing_app)
        await settle()
        waiting = FakeRequest("/next")
        waiting_task = waiting.call(failing_app)
        await settle()
        assert failing_app.stats.queued_now == 1
        gate.set()
        with pytest.raises(RuntimeError):
            await failing
        await settle()
        assert app.entered == ["/next"] and failing_app.stats.in_flight == 1
        app.release("/next")
        await waiting_task
        assert failing_app.stats.in_flight == 0 and shedding.stats.arrived == 0

    run(scenario())


def test_a_client_that_disconnects_while_queued_leaves_the_queue() -> None:
    async def scenario() -> None:
        app = HeldApp()
        shedding = LoadShedding(app, max_concurrency=1, max_queue=2, queue_timeout=60)
        holder, gone, patient = FakeRequest("/hold"), FakeRequest("/gone"), FakeRequest("/patient")
        holding = holder.call(shedding)
        await settle()
        leaving = gone.call(shedding)
        staying = patient.call(shedding)
        await settle()
        assert shedding.stats.queued_now == 2
        gone.disconnect()
        await leaving  # it leaves without a response: nobody is there to read it
        assert gone.sent == [] and shedding.stats.queued_now == 1
        assert shedding.stats.disconnected == 1
        app.release("/hold")
        app.release("/patient")
        await asyncio.gather(holding, staying)
        assert app.entered == ["/hold", "/patient"] and patient.status == 200

    run(scenario())


def test_a_queued_request_body_and_a_pending_receive_reach_the_app() -> None:
    async def scenario() -> None:
        app = HeldApp()
        shedding = LoadShedding(app, max_concurrency=1, max_queue=1, queue_timeout=60)
        holding = FakeRequest("/hold").call(shedding)
        await settle()
        queued = FakeRequest("/upload", body=b"payload")
        task = queued.call(shedding)
        await settle()
        # While it waited, its body was read (to see a disconnect) and a second
        # receive() is running; both must reach the app, none twice.
        assert queued.receives == 2
        app.release("/hold")
        await settle()
        assert app.bodies["/upload"] == b"payload"
        queued.disconnect()
        app.release("/upload")
        await asyncio.gather(holding, task)
        assert queued.receives == 2  # the pending receive was handed over, not repeated

    run(scenario())


def test_expect_100_continue_is_not_read_while_queued() -> None:
    async def scenario() -> None:
        app = HeldApp()
        shedding = LoadShedding(app, max_concurrency=1, max_queue=1, queue_timeout=60)
        holding = FakeRequest("/hold").call(shedding)
        await settle()
        queued = FakeRequest("/upload", b"x", headers=[(b"expect", b"100-continue")])
        task = queued.call(shedding)
        await settle()
        assert queued.receives == 0  # reading would tell the client to upload now
        app.release("/hold")
        app.release("/upload")
        await asyncio.gather(holding, task)
        assert app.bodies["/upload"] == b"x"

    run(scenario())


def test_cancelled_waiters_leave_and_a_granted_slot_is_passed_on() -> None:
    async def scenario() -> None:
        app = HeldApp()
        shedding = LoadShedding(app, max_concurrency=1, max_queue=3, queue_timeout=60)
        holding = FakeRequest("/hold").call(shedding)
        await settle()
        cancelled = FakeRequest("/cancelled").call(shedding)
        granted = FakeRequest("/granted").call(shedding)
        last = FakeRequest("/last").call(shedding)
        await settle()
        cancelled.cancel()  # a plain waiter cancelled (server shutdown)
        await settle()
        assert shedding.stats.cancelled == 1 and shedding.stats.queued_now == 2
        app.release("/hold")
        await holding  # its slot is handed to /granted, which has not run yet...
        granted.cancel()  # ... and is cancelled before it could: the slot goes on to /last
        await settle()
        assert app.entered == ["/hold", "/last"] and shedding.stats.in_flight == 1
        app.release("/last")
        await last
        for task in (cancelled, granted):
            with pytest.raises(asyncio.CancelledError):
                await task
        stats = shedding.stats
        assert stats.in_flight == 0 and stats.queued_now == 0
        assert (stats.arrived, stats.admitted, stats.cancelled) == (4, 2, 2)

    run(scenario())


def test_lifespan_and_websocket_scopes_pass_through() -> None:
    async def scenario() -> None:
        seen: list[str] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(scope["type"])

        shedding = LoadShedding(app, max_concurrency=1)
        shedding._in_flight = 1  # every slot busy: HTTP would be shed
        for kind in ("lifespan", "websocket"):
            await FakeRequest(kind=kind).call(shedding)
        assert seen == ["lifespan", "websocket"] and shedding.stats.arrived == 0

    run(scenario())


def test_water_marks_follow_the_queue_depth() -> None:
    async def scenario() -> None:
        app = HeldApp()
        transitions: list[bool] = []
        marks = WaterMarks(high=3, low=1, on_change=transitions.append)
        shedding = LoadShedding(
            app, max_concurrency=1, max_queue=4, queue_timeout=60, water_marks=marks
        )
        paths = [f"/{i}" for i in range(5)]
        tasks = []
        for path in paths:
            tasks.append(FakeRequest(path).call(shedding))
            await settle()
        assert transitions == [True] and shedding.pressured and shedding.stats.pressured
        for path in paths[:3]:
            app.release(path)
            await settle()
        assert transitions == [True, False] and not shedding.pressured
        for path in paths[3:]:
            app.release(path)
        await asyncio.gather(*tasks)

    run(scenario())


async def _complete(
    shedding: LoadShedding, app: HeldApp, clock: FakeClock, every: float, n: int
) -> None:
    """``n`` requests one after the other, each completing ``every`` seconds after the last."""
    for i in range(n):
        path = f"/done{clock.now}-{i}"
        task = FakeRequest(path).call(shedding)
        await settle()
        clock.now += every
        app.release(path)
        await task


async def _fill(shedding: LoadShedding, app: HeldApp, n: int) -> list[asyncio.Task[None]]:
    tasks = [FakeRequest(f"/fill{i}").call(shedding) for i in range(n)]
    await settle()
    return tasks


async def _drain(app: HeldApp, tasks: list[asyncio.Task[None]]) -> None:
    for i in range(len(tasks)):
        app.release(f"/fill{i}")
    await asyncio.gather(*tasks)


def test_retry_after_grows_when_completions_slow_down_and_the_backlog_grows() -> None:
    async def measure(every: float, fill: int) -> int:
        app, clock = HeldApp(), FakeClock()
        shedding = LoadShedding(
            app, max_concurrency=4, max_queue=16, queue_timeout=60, clock=clock, rate_window=10
        )
        await _complete(shedding, app, clock, every, 10)
        tasks = await _fill(shedding, app, fill)
        seconds = shedding.retry_after()
        if fill == 20:  # full: a newcomer is refused and told exactly this
            refused = FakeRequest("/refused")
            await refused.call(shedding)
            assert refused.header(b"retry-after") == str(seconds).encode()
        await _drain(app, tasks)
        return seconds

    async def scenario() -> None:
        # 10 completions 0.1 s apart: 10/s; backlog 20 -> ceil(20 / 10) = 2 s.
        assert await measure(0.1, 20) == 2
        # 10 completions 2.5 s apart (the last at 25 s), window 10 s: those at 15, 17.5,
        # 20, 22.5, 25 count -> 0.5/s; 20 / 0.5 = 40 s.
        assert await measure(2.5, 20) == 40
        # The same slow rate with half the backlog: 10 / 0.5 = 20 s.
        assert await measure(2.5, 10) == 20
        # Fast completions and a small backlog: never below 1 s.
        assert await measure(0.01, 2) == 1

    run(scenario())


def test_retry_after_without_completions_grows_with_the_oldest_request_and_is_capped() -> None:
    async def scenario() -> None:
        app, clock = HeldApp(), FakeClock(100.0)
        shedding = LoadShedding(
            app, max_concurrency=2, max_queue=2, queue_timeout=60, clock=clock, retry_after_cap=30
        )
        tasks = await _fill(shedding, app, 4)
        assert shedding.retry_after() == 1  # just started: nothing says service is slow
        clock.now += 10.0  # stalled: 2 in flight for 10 s -> rate <= 0.2/s; 4 / 0.2 = 20 s
        assert shedding.retry_after() == 20
        clock.now += 100.0
        assert shedding.retry_after() == 30  # capped
        await _drain(app, tasks)

    run(scenario())


def test_stats_and_prometheus_export() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from reactive_bp.metrics import register_prometheus

    async def scenario() -> None:
        app, clock = HeldApp(), FakeClock()
        meter = BackpressureMeter("api")
        shedding = LoadShedding(
            app, max_concurrency=1, max_queue=1, queue_timeout=60, meter=meter, clock=clock
        )
        first = FakeRequest("/1").call(shedding)
        await settle()
        second = FakeRequest("/2").call(shedding)
        await settle()
        await FakeRequest("/3").call(shedding)  # shed
        clock.now += 0.5
        app.release("/1")
        await first
        await settle()
        check(shedding, meter)  # /2 in flight after waiting 0.5 s
        app.release("/2")
        await second

    def check(shedding: LoadShedding, meter: BackpressureMeter) -> None:
        stats = shedding.stats
        counts = (stats.arrived, stats.admitted, stats.shed, stats.in_flight, stats.completed)
        assert counts == (3, 2, 1, 1, 1)
        assert stats.wait.samples == 2 and stats.wait.max == 0.5 and stats.wait.p50 == 0.0
        assert stats.wait.p99 == 0.5
        buffer = meter.stats
        assert buffer is not None
        assert (buffer.produced, buffer.delivered, buffer.dropped, buffer.depth) == (3, 2, 1, 0)
        assert buffer.dropped_by_reason == {"shed": 1} and buffer.peak_depth == 1

        registry = prometheus_client.CollectorRegistry()
        register_prometheus(meter, registry=registry)

        def sample(name: str, **labels: str) -> float | None:
            value: float | None = registry.get_sample_value(name, {"stream": "api", **labels})
            return value

        assert sample("reactive_bp_produced_total") == 3
        assert sample("reactive_bp_delivered_total") == 2
        assert sample("reactive_bp_dropped_total", reason="shed") == 1
        assert sample("reactive_bp_queue_depth") == 0
        assert sample("reactive_bp_queue_peak_depth") == 1
        assert sample("reactive_bp_in_flight") == 1
        assert sample("reactive_bp_wait_seconds_p99") == 0.5
        assert sample("reactive_bp_wait_seconds_max") == 0.5

    run(scenario())


def test_random_load_keeps_the_limits_and_the_accounting() -> None:
    """Many requests with random holds, failures, disconnects and cancellations."""

    async def scenario(seed: int) -> None:
        rng = random.Random(seed)
        concurrency = {"now": 0, "peak": 0}

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            concurrency["now"] += 1
            concurrency["peak"] = max(concurrency["peak"], concurrency["now"])
            try:
                for _ in range(rng.randrange(0, 6)):
                    await asyncio.sleep(0)
                if rng.random() < 0.1:
                    raise ValueError("random failure")
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                concurrency["now"] -= 1

        shedding = LoadShedding(app, max_concurrency=3, max_queue=5, queue_timeout=60)
        tasks: list[asyncio.Task[None]] = []
        requests: list[FakeRequest] = []
        cancels = 0
        for i in range(300):
            request = FakeRequest(f"/{i}")
            requests.append(request)
            tasks.append(request.call(shedding))
            roll = rng.random()
            if roll < 0.05:
                request.disconnect()
            elif roll < 0.08:
                tasks[-1].cancel()
                cancels += 1
            for _ in range(rng.randrange(0, 3)):
                await asyncio.sleep(0)
            stats = shedding.stats
            assert stats.in_flight <= 3 and stats.queued_now <= 5
        await asyncio.gather(*tasks, return_exceptions=True)
        stats = shedding.stats
        assert concurrency["peak"] <= 3 and concurrency["now"] == 0
        assert stats.in_flight == 0 and stats.queued_now == 0
        # A task cancelled before its first step never arrived.
        assert 300 - cancels <= stats.arrived <= 300
        assert stats.arrived == (
            stats.admitted + stats.shed + stats.timed_out + stats.disconnected + stats.cancelled
        )
        assert stats.admitted == stats.completed and stats.shed > 0

    for seed in range(10):
        run(scenario(seed))


def test_invalid_settings_are_refused() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        pass

    for bad in (
        {"max_concurrency": 0},
        {"max_concurrency": 1, "max_queue": -1},
        {"max_concurrency": 1, "queue_timeout": 0},
        {"max_concurrency": 1, "status": 200},
        {"max_concurrency": 1, "retry_after_cap": 0.5},
        {"max_concurrency": 1, "rate_window": 0},
    ):
        with pytest.raises(ValueError):
            LoadShedding(app, **bad)


# ---------------------------------------------------------------------------------------
# Streaming responses: unit tests with a fake server
# ---------------------------------------------------------------------------------------


def test_flow_response_requests_the_next_item_only_after_send_returned() -> None:
    async def scenario() -> None:
        produced = 0
        sent = 0
        gaps: list[int] = []

        def make(i: int) -> bytes:
            nonlocal produced
            produced += 1
            return b"%d\n" % i

        app = flow_response(Flow.range(50).map(make), media_type="text/plain")
        request = FakeRequest("/stream")

        async def slow_send(message: ASGIMessage) -> None:
            nonlocal sent
            request.sent.append(message)
            if message["type"] == "http.response.body" and message.get("more_body"):
                for _ in range(5):  # a slow client: the server's send is blocked meanwhile
                    gaps.append(produced - sent)
                    await asyncio.sleep(0)
                sent += 1

        await app(request.scope, request.receive, slow_send)
        assert request.status == 200 and request.header(b"content-type") == b"text/plain"
        assert request.body == b"".join(b"%d\n" % i for i in range(50))
        assert max(gaps) == 1 and produced == sent == 50

    run(scenario())


def test_streams_fed_from_a_thread_race_with_disconnects() -> None:
    """A producer on pool threads, the client leaving at a random point (200 runs)."""
    full = b"".join(b"%d," % i for i in range(20))

    async def one(seed: int, pool: ThreadPoolScheduler) -> None:
        rng = random.Random(seed)
        counts = {"produced": 0, "sent": 0, "max_gap": 0}
        cancelled, ended = threading.Event(), threading.Event()

        def make(i: int) -> bytes:
            counts["produced"] += 1
            counts["max_gap"] = max(counts["max_gap"], counts["produced"] - counts["sent"])
            return b"%d," % i

        def on_cancel() -> None:
            cancelled.set()
            ended.set()

        flow = (
            Flow.range(20)
            .map(make)
            .do_on_complete(ended.set)
            .do_on_cancel(on_cancel)
            .subscribe_on(pool)
        )
        request = FakeRequest()

        async def send(message: ASGIMessage) -> None:
            request.sent.append(message)
            if message["type"] == "http.response.body" and message.get("more_body"):
                counts["sent"] += 1

        task = asyncio.ensure_future(flow_response(flow)(request.scope, request.receive, send))
        for _ in range(rng.randrange(0, 400)):
            await asyncio.sleep(0)
        request.disconnect()
        await task
        finished = bool(request.sent) and request.sent[-1].get("more_body") is False
        if finished:
            assert request.body == full
        else:
            assert full.startswith(request.body)
            # Upstream ends within a second: cancelled, or it had completed just before
            # the disconnect won the race for the final chunk.
            assert ended.wait(1.0), "a disconnect mid-stream must cancel the producer"
            assert cancelled.is_set() or counts["produced"] == 20
        assert counts["max_gap"] <= 1

    async def all_runs(pool: ThreadPoolScheduler) -> None:
        try:
            for seed in range(200):
                await one(seed, pool)
        finally:
            # Before the loop closes: a producer thread may still be waking it.
            pool.shutdown()

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        run(all_runs(ThreadPoolScheduler(2, thread_name_prefix="asgi-race")), timeout=60)
    finally:
        sys.setswitchinterval(previous)


def test_flow_response_error_before_the_first_item_answers_500() -> None:
    async def scenario() -> None:
        request = FakeRequest()
        await request.call(flow_response(Flow.error(ValueError("no data"))))
        assert request.status == 500
        encode_fails = FakeRequest()
        await encode_fails.call(flow_response(Flow.just(3)))  # not bytes, no encode=
        assert encode_fails.status == 500

    run(scenario())


def test_flow_response_error_after_the_headers_aborts_the_response() -> None:
    async def scenario() -> None:
        flow = Flow.concat(Flow.just(b"a", b"b"), Flow.error(ValueError("broke mid-stream")))
        request = FakeRequest()
        with pytest.raises(ValueError, match="broke mid-stream"):
            await request.call(flow_response(flow))
        assert request.status == 200 and request.body == b"ab"
        # No final chunk: the server closes the connection and the body is incomplete.
        assert not any(
            m["type"] == "http.response.body" and not m.get("more_body") for m in request.sent
        )

    run(scenario())


def test_flow_response_empty_flow_and_head_request() -> None:
    async def scenario() -> None:
        empty = FakeRequest()
        await empty.call(flow_response(Flow.empty()))
        assert empty.status == 200 and empty.body == b"" and empty.sent[-1]["more_body"] is False
        subscribed = threading.Event()
        head = FakeRequest()
        head.scope["method"] = "HEAD"
        await head.call(flow_response(Flow.just(b"x").do_on_subscribe(lambda s: subscribed.set())))
        assert head.status == 200 and not subscribed.is_set()

    run(scenario())


def test_flow_response_disconnect_cancels_an_idle_flow() -> None:
    async def scenario() -> None:
        cancelled = threading.Event()
        flow = Flow.concat(Flow.just(b"first"), Flow.never()).do_on_cancel(cancelled.set)
        request = FakeRequest()
        task = request.call(flow_response(flow))
        await settle()
        assert request.body == b"first" and not cancelled.is_set()
        request.disconnect()
        await task
        assert cancelled.is_set()

    run(scenario())


def test_ndjson_lines() -> None:
    async def scenario() -> None:
        request = FakeRequest()
        items = Flow.just({"a": 1}, [1, "é"], {"when": 1.5})
        await request.call(ndjson_response(items, default=str))
        assert request.header(b"content-type") == b"application/x-ndjson"
        assert request.body.decode().splitlines() == ['{"a":1}', '[1,"é"]', '{"when":1.5}']

    run(scenario())


def test_server_sent_event_framing() -> None:
    assert ServerSentEvent("one").encode() == b"data: one\n\n"
    assert ServerSentEvent("a\nb\r\nc\rd", event="tick", id="7", retry=1500).encode() == (
        b"event: tick\nid: 7\nretry: 1500\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    )
    assert ServerSentEvent("").encode() == b"data: \n\n"
    with pytest.raises(ValueError):
        ServerSentEvent("x", event="two\nlines").encode()
    with pytest.raises(ValueError):
        ServerSentEvent("x", id="nul\0").encode()
    with pytest.raises(ValueError):
        sse_response(Flow.empty(), event="bad\r")

    async def scenario() -> None:
        request = FakeRequest()
        items: Flow[object] = Flow.just(
            1, "two\nlines", ServerSentEvent("own", event="other", id="9")
        )
        await request.call(sse_response(items, event="update"))
        assert request.header(b"content-type") == b"text/event-stream; charset=utf-8"
        assert request.header(b"cache-control") == b"no-cache"
        assert request.body == (
            b"event: update\ndata: 1\n\n"
            b"event: update\ndata: two\ndata: lines\n\n"
            b"event: other\nid: 9\ndata: own\n\n"
        )

    run(scenario())


def test_sse_keep_alive_comments_while_the_flow_is_idle() -> None:
    async def scenario() -> None:
        request = FakeRequest()
        flow = Flow.concat(Flow.just("hello"), Flow.never())
        task = request.call(sse_response(flow, keep_alive=0.01))
        while request.body.count(b": keep-alive\n\n") < 2:
            await asyncio.sleep(0.005)  # waiting for the server's heartbeats
        assert request.body.startswith(b"data: hello\n\n")
        request.disconnect()
        await task

    run(scenario())


# ---------------------------------------------------------------------------------------
# End to end: uvicorn on 127.0.0.1
# ---------------------------------------------------------------------------------------

OVERLOAD = {
    "service": 0.020,  # each admitted request takes 20 ms: capacity 4 / 20 ms = 200/s
    "max_concurrency": 4,
    "max_queue": 8,
    "queue_timeout": 0.25,
    "requests": 400,
    "rate": 400.0,  # arrivals per second: twice the capacity, for one second
    "connections": 64,
}


def overload_app() -> ASGIApp:
    """The overload test's server (``uvicorn --factory``): 20 ms of work per request."""
    service = float(os.environ["OVERLOAD_SERVICE"])

    async def work(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(service)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})

    if os.environ["OVERLOAD_SHED"] == "1":
        return LoadShedding(
            work,
            max_concurrency=int(os.environ["OVERLOAD_MAX_CONCURRENCY"]),
            max_queue=int(os.environ["OVERLOAD_MAX_QUEUE"]),
            queue_timeout=float(os.environ["OVERLOAD_QUEUE_TIMEOUT"]),
        )
    # Without shedding: the same concurrency limit, but every request waits its turn.
    return LoadShedding(
        work,
        max_concurrency=int(os.environ["OVERLOAD_MAX_CONCURRENCY"]),
        max_queue=1_000_000,
        queue_timeout=3600.0,
    )


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _get(connection: Connection, path: str) -> tuple[int, bytes | None]:
    """One keep-alive ``GET`` on a raw connection: (status, Retry-After)."""
    reader, writer = connection
    writer.write(b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n" % path.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        if b":" in line:
            name, value = line.split(b":", 1)
            headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return int(status_line.split()[1]), headers.get(b"retry-after")


async def _overload(
    host: str, port: int, requests: int, rate: float, connections: int
) -> list[tuple[int, float, bytes | None]]:
    """Open-loop load: ``requests`` GETs arriving at ``rate``/s over at most ``connections``.

    Each latency is measured from the request's scheduled arrival, so time spent
    waiting for a free connection counts (no coordinated omission). A minimal
    HTTP/1.1 client on asyncio streams: httpx costs a few ms of CPU per request on
    a small machine, which would measure the client rather than the server.
    """
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))
    results: list[tuple[int, float, bytes | None]] = []

    async def one(due: float) -> None:
        connection = await pool.get()
        try:
            status, retry_after = await _get(connection, "/work")
        finally:
            pool.put_nowait(connection)
        results.append((status, time.perf_counter() - due, retry_after))

    start = time.perf_counter()
    arrivals = []
    for i in range(requests):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # the arrival schedule, not timing logic
        arrivals.append(asyncio.ensure_future(one(due)))
    await asyncio.gather(*arrivals)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return results


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def test_overload_with_shedding_bounds_admitted_latency(asgi_process: Callable[..., Any]) -> None:
    """400 requests arriving at 400/s (twice the capacity) over 64 connections.

    The server (a child process) runs 4 slots of 20 ms each: 200 requests/s.

    Bound for admitted requests (stated): a request waits at most ``queue_timeout``
    in the queue, then is served in ``service``; the queue holds at most
    ``max_queue`` requests in front of ``max_concurrency`` slots, so the usual
    wait is about ``service x max_queue / max_concurrency``. p99 <= queue_timeout +
    service x (1 + max_queue / max_concurrency) + 0.15 s (the loopback round trip,
    the client's and the server's event loops on a shared 2-core machine)
    = 0.25 + 0.06 + 0.15 = 0.46 s. Without shedding the backlog grows by 200
    requests/s for the whole second of arrivals, and so does the latency: the
    last arrivals wait about a second.
    """
    o = OVERLOAD
    env = {
        "OVERLOAD_SERVICE": str(o["service"]),
        "OVERLOAD_MAX_CONCURRENCY": str(o["max_concurrency"]),
        "OVERLOAD_MAX_QUEUE": str(o["max_queue"]),
        "OVERLOAD_QUEUE_TIMEOUT": str(o["queue_timeout"]),
    }
    factory = f"{__name__}:overload_app"
    load = (int(o["requests"]), o["rate"], int(o["connections"]))
    shed_server = asgi_process(factory, env={**env, "OVERLOAD_SHED": "1"})
    plain_server = asgi_process(factory, env={**env, "OVERLOAD_SHED": "0"})
    shed = run(_overload(shed_server.host, shed_server.port, *load), timeout=60)
    plain = run(_overload(plain_server.host, plain_server.port, *load), timeout=60)

    admitted = [seconds for status, seconds, _ in shed if status == 200]
    refused = [(seconds, retry) for status, seconds, retry in shed if status != 200]
    assert {status for status, _, _ in shed} <= {200, 503}
    assert len(admitted) + len(refused) == o["requests"] and refused and admitted
    assert all(retry is not None and int(retry) >= 1 for _, retry in refused)
    plain_latency = [seconds for status, seconds, _ in plain if status == 200]
    assert len(plain_latency) == o["requests"]

    bound = o["queue_timeout"] + o["service"] * (1 + o["max_queue"] / o["max_concurrency"]) + 0.15
    shed_p99, plain_p99 = _p(admitted, 0.99), _p(plain_latency, 0.99)
    retry_values = sorted({int(retry or 0) for _, retry in refused})
    print(
        f"\nwith shedding: {len(admitted)} admitted, {len(refused)} shed (503);"
        f" admitted p50 {_p(admitted, 0.5) * 1000:.0f} ms, p99 {shed_p99 * 1000:.0f} ms"
        f" (bound {bound * 1000:.0f} ms); 503 p99 {_p([s for s, _ in refused], 0.99) * 1000:.0f}"
        f" ms; Retry-After values {retry_values}"
        f"\nwithout shedding: {len(plain_latency)} admitted;"
        f" p50 {_p(plain_latency, 0.5) * 1000:.0f} ms, p99 {plain_p99 * 1000:.0f} ms,"
        f" max {max(plain_latency) * 1000:.0f} ms"
    )
    assert shed_p99 <= bound
    assert plain_p99 > 2 * shed_p99  # what shedding buys: latency no longer grows with the backlog


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS read from /proc (Linux)")
def test_a_slow_client_paces_the_stream_and_memory_stays_flat(
    asgi_server: Callable[..., Any],
) -> None:
    """A client reading one 64 KiB chunk per 10 ms from a producer on another thread.

    Measured in this process (the server runs in a thread, the client is a raw
    socket that discards what it reads): produced - sent <= 1 at every item, and
    the RSS stays within 16 MiB of where it was before the request while the producer
    could have made 2000 chunks (125 MiB) if nothing held it back. Closing the
    socket while the server's send is blocked cancels the flow within 1 s.
    """
    chunk = 65536
    counts = {"produced": 0, "sent": 0, "max_gap": 0}
    cancelled = threading.Event()

    def make(i: int) -> bytes:
        counts["produced"] += 1
        counts["max_gap"] = max(counts["max_gap"], counts["produced"] - counts["sent"])
        return i.to_bytes(8, "big") * (chunk // 8)  # a fresh 64 KiB object each time

    pool = ThreadPoolScheduler(1, thread_name_prefix="asgi-producer")
    flow = Flow.range(2000).map(make).do_on_cancel(cancelled.set).subscribe_on(pool)
    inner = flow_response(flow)

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_send(message: ASGIMessage) -> None:
            await send(message)
            if message["type"] == "http.response.body" and message.get("body"):
                counts["sent"] += 1

        await inner(scope, receive, counted_send)

    server = asgi_server(counting)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        baseline = _rss_bytes()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect((server.host, server.port))
        client.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        rss: list[int] = []
        for _tick in range(150):
            got = 0
            while got < chunk:
                data = client.recv(chunk - got)
                assert data, "the server closed the stream early"
                got += len(data)
            rss.append(_rss_bytes())
            time.sleep(0.01)  # the slow client: one chunk per 10 ms
        produced_while_reading = counts["produced"]
        growth = max(rss) - baseline
        print(
            f"\nslow client: 150 chunks read, {produced_while_reading} produced, max produced-sent "
            f"{counts['max_gap']}, RSS growth {growth / 2**20:.1f} MiB"
        )
        assert counts["max_gap"] <= 1
        assert produced_while_reading < 2000  # paced by the reader, not produced ahead
        assert growth < 16 * 2**20
        # Stop reading and go away while the server is blocked in send.
        closed_at = time.monotonic()
        client.close()
        assert cancelled.wait(1.0), "the disconnect did not cancel the flow within 1 s"
        print(f"cancelled {(time.monotonic() - closed_at) * 1000:.0f} ms after the disconnect")
    finally:
        client.close()
        pool.shutdown()


def test_a_disconnect_cancels_an_idle_flow_within_a_second(asgi_server: Callable[..., Any]) -> None:
    cancelled = threading.Event()
    flow = Flow.concat(Flow.just(b"first\n"), Flow.never()).do_on_cancel(cancelled.set)
    server = asgi_server(flow_response(flow))
    with socket.create_connection((server.host, server.port)) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        received = b""
        while b"first" not in received:
            data = client.recv(4096)
            assert data
            received += data
        assert not cancelled.is_set()
    closed_at = time.monotonic()
    assert cancelled.wait(1.0), "the disconnect did not cancel the idle flow within 1 s"
    assert time.monotonic() - closed_at < 1.0


def test_a_flow_error_mid_stream_gives_the_client_an_incomplete_body(
    asgi_server: Callable[..., Any],
) -> None:
    flow = Flow.concat(Flow.just(b"one\n", b"two\n"), Flow.error(ValueError("mid-stream")))
    failing_early = flow_response(Flow.error(ValueError("early")))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await (failing_early if scope["path"] == "/early" else flow_response(flow))(
            scope, receive, send
        )

    server = asgi_server(app)
    with httpx.Client(base_url=server.url) as client:
        early = client.get("/early")
        assert early.status_code == 500
        received = b""
        with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", "/late") as response:
            assert response.status_code == 200
            for data in response.iter_bytes():
                received += data
        assert received == b"one\ntwo\n"


def test_ndjson_and_sse_over_http(asgi_server: Callable[..., Any]) -> None:
    routes: dict[str, ASGIApp] = {
        "/ndjson": ndjson_response(Flow.range(3).map(lambda i: {"n": i})),
        "/sse": sse_response(Flow.range(2), event="tick"),
    }

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        await routes[scope["path"]](scope, receive, send)

    server = asgi_server(router)
    with httpx.Client(base_url=server.url) as client:
        ndjson = client.get("/ndjson")
        assert ndjson.headers["content-type"] == "application/x-ndjson"
        assert ndjson.text == '{"n":0}\n{"n":1}\n{"n":2}\n'
        sse = client.get("/sse")
        assert sse.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert sse.text == "event: tick\ndata: 0\n\nevent: tick\ndata: 1\n\n"


def test_a_receive_that_raises_fails_the_response_and_cancels_the_flow() -> None:
    """A server whose receive() raises (not a client leaving): the error reaches the server
    and the flow is cancelled; before, the response ended silently as if disconnected."""
    cancelled = threading.Event()

    async def main() -> None:
        request = FakeRequest()
        request.inbox.get_nowait()

        async def receive() -> dict[str, Any]:
            raise OSError("connection reset")

        app = flow_response(Flow.never().do_on_cancel(cancelled.set))
        with pytest.raises(OSError, match="connection reset"):
            await app(request.scope, receive, request.send)

    asyncio.run(main())
    assert cancelled.is_set()
