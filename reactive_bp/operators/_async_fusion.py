"""Assembly-time fusion over async iterables, and ``aiter`` straight through it.

``Flow.from_async_iterable(agen).map(f).filter(p)`` unfused is a pump task
that calls ``__anext__`` per requested item and hands each item through two
operator subscribers. Fused (as ``_fusion.py`` does for iterables), calling a
fusable operator on a source built by ``from_async_iterable`` or
``from_queue`` returns a new source, :class:`FusedAsyncIterableFlow`, that
remembers the stages. Its subscription compiles them into **one async
generator** over the source iterator and pumps it with the ordinary
demand-bounded pump (``sources/_async.py``): one ``__anext__`` of the fused
generator per requested item, ``try_on_next`` kept, demand settled once per
batch. Fusable stages and the one rule of where they fuse are those of
``_fusion.py`` (``add_stage``); the stage code is its templates.

**Consumer fusion.** ``aiter()`` (also ``async for item in flow``,
``to_list_async``, ``first_async``) of such a flow, with nothing in between,
needs no pump, no subscription and no queue: it returns a second compiled
async generator that pulls the source itself, one item per ``__anext__`` of
the consumer. Pulling only what the consumer asks for is within any
``prefetch``, so demand holds trivially. This is used when the source has no
``loop=`` or it is the loop running when ``aiter()`` is called; otherwise the
items must be pulled on that other loop, and ``aiter`` bridges as before.

How the semantics stay those of the unfused chain:

* Demand: the pump resumes the fused generator at most ``n`` times for
  ``request(n)``; a ``filter`` or ``skip`` pulls until an item passes, as
  the unfused chain does through ``try_on_next``. A final ``take(k)`` is not
  in the pump's generator: the pump counts it (``_remaining``), offers at
  most ``k`` items and completes on the ``k``-th at once, never pulling item
  ``k + 1``. The consumer generator counts it inline and closes the source
  as soon as it has the ``k``-th item.
* Errors: a raising user function or source ends the generator; the pump
  signals that very exception object and closes the source (the unfused
  operator would have cancelled upstream); the consumer generator raises it
  from ``async for``, after closing the source. A ``StopIteration`` or
  ``StopAsyncIteration`` raised by a user function is carried out of the
  pump's generator and signalled as itself (an async generator would turn it
  into ``RuntimeError``); from ``aiter`` it is the ``RuntimeError`` (with the
  original as ``__cause__``) that the unfused bridge raises too.
* ``None`` (Rule 2.13): checked after the source and after every ``map``,
  with the unfused operators' error types and messages (``NoneItemError``
  naming the source, or the mapper and the item).
* Cancellation and leaving the loop: the subscription closes the fused
  generator and then the source iterator (``aclose``), in one task on the
  pump's loop, as the plain source closes its iterator. The consumer
  generator closes the source in its ``finally``: when the ``async for``
  ends, breaks or raises, when the task is cancelled, or when the generator
  is closed or collected -- where the unfused ``aiter`` cancels upstream.
  An error from ``aclose`` goes to the undeliverable hook, not to the
  consumer (as with the unfused chain, whose ``aclose`` runs in its own task).
* Subscribing: the loop, the "subscribe inside a running event loop or pass
  ``loop=``" error and a failing ``__aiter__`` are those of the source
  (``AsyncIterableFlow._open``). Flows stay immutable and re-subscribable.

The generated source is built only from fixed templates and stage positions,
never from user data; it is compiled once per sequence of stage kinds and cached.
"""

from __future__ import annotations

import asyncio
import functools
import linecache
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from typing_extensions import override

from .._core._hooks import report_undeliverable
from .._flow import Flow
from ..sources._async import AsyncIterableFlow, _AsyncPullSubscription, start
from ..sources._iterable import NoneItemError
from ._fusion import _SKIP_WHILE, _TEMPLATES, CallbackStopIteration, add_stage

if TYPE_CHECKING:
    from ..abc import Subscriber

__all__ = ["FusedAsyncIterableFlow", "direct_aiter", "fuse_async"]

T = TypeVar("T")

FusedAsyncGenerator = Callable[..., AsyncGenerator[object, None]]


@functools.lru_cache(maxsize=256)
def _compile(kinds: tuple[str, ...], consumer: bool, take: bool) -> FusedAsyncGenerator:
    """Return the async generator function for these stage kinds (cached).

    The pump's variant (``consumer=False``) takes ``(source, origin, arg0,
    ...)``: the source iterator (as ``_iterate`` returns it), the source flow
    (named by a ``NoneItemError``) and one argument per stage (a function, or
    a count for ``skip``). The consumer's variant takes the iterable instead
    (it opens and closes the iterator itself) and, with ``take``, the take's
    count last.
    """
    stages = [f"arg{i}" for i in range(len(kinds))]
    first = "iterable" if consumer else "source"
    params = ", ".join([first, "origin", *stages, *(["take"] if take else [])])
    lines = [f"async def fused({params}):"]
    lines += [f"    skipping{i} = True" for i, kind in enumerate(kinds) if kind == _SKIP_WHILE]
    if consumer:
        lines += ["    iterator = iterable.__aiter__()", "    try:"]
        lines += ["        async for item in iterate(iterator):"]
    else:
        lines += ["    try:", "        async for item in source:"]
    body = ["if item is None:", "    raise NoneItemError(f'{origin!r} produced None')"]
    for i, kind in enumerate(kinds):
        body += [line.format(i=i) for line in _TEMPLATES[kind]]
    if take:  # consumer only: the pump counts a take itself
        body += ["take -= 1", "if not take:", "    break  # close the source, then yield it"]
    body.append("yield item")
    lines += ["            " + line for line in body]
    if consumer:
        if take:
            lines += ["        else:", "            return"]
        lines += ["    finally:", "        await close(iterator, origin)"]
        if take:
            lines += ["    yield item"]
    else:
        lines += [
            "    except (StopIteration, StopAsyncIteration) as stop:  # from a user function",
            "        raise CallbackStopIteration(stop) from None",
        ]
    text = "\n".join(lines) + "\n"
    variant = " consumer" if consumer else ""
    taking = " take" if take else ""
    filename = f"<reactive_bp fused async {'.'.join(kinds) or 'source'}{taking}{variant}>"
    namespace: dict[str, object] = {
        "NoneItemError": NoneItemError,
        "CallbackStopIteration": CallbackStopIteration,
        "iterate": _iterate,
        "close": _close,
    }
    # Safe: the text comes from the fixed templates and stage positions only.
    exec(compile(text, filename, "exec"), namespace)
    # Tracebacks through the generated code show its lines.
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    return cast("FusedAsyncGenerator", namespace["fused"])


class _AnextOnly(Generic[T]):
    """An iterator without ``__aiter__`` (the pump never needed it), made ``async for``-able."""

    __slots__ = ("_anext",)

    def __init__(self, iterator: AsyncIterator[T]) -> None:
        self._anext = iterator.__anext__

    def __aiter__(self) -> _AnextOnly[T]:
        return self

    def __anext__(self) -> Awaitable[T]:
        return self._anext()


def _iterate(iterator: AsyncIterator[T]) -> AsyncIterator[T]:
    return iterator if hasattr(type(iterator), "__aiter__") else _AnextOnly(iterator)


async def _close(iterator: object, origin: object) -> None:
    """``aclose`` an iterator if it has one; its error goes to the undeliverable hook."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception as error:
        report_undeliverable(error, f"{origin!r} aclose")


async def _close_both(fused: object, source: object, origin: object) -> None:
    await _close(fused, origin)
    await _close(source, origin)


class _FusedAsyncSubscription(_AsyncPullSubscription[T]):
    """Pumps the fused generator; closes it and then the source iterator."""

    __slots__ = ("_source_iterator",)

    def __init__(
        self,
        actual: Subscriber[T],
        fused: AsyncIterator[T],
        source_iterator: AsyncIterator[object],
        loop: asyncio.AbstractEventLoop,
        source: object,
        take: int | None,
    ) -> None:
        super().__init__(actual, fused, loop, source)
        self._source_iterator = source_iterator
        self._remaining = take

    @override
    def _finish(self, actual: Subscriber[T], error: Exception | None) -> None:
        if type(error) is CallbackStopIteration:
            error = error.stop  # the user function's own exception object
        super()._finish(actual, error)

    @override
    def _close_iterator(self) -> None:
        closing = _close_both(self._iterator, self._source_iterator, self._source)
        try:
            self._loop.create_task(closing)
        except RuntimeError as error:  # the loop is closing
            closing.close()
            report_undeliverable(error, f"{self._source!r} aclose")


class FusedAsyncIterableFlow(Flow[T], Generic[T]):
    """An async-iterable source with fused stages: one async generator, one pump.

    Immutable: each fusable operator returns a new ``FusedAsyncIterableFlow``.
    """

    __slots__ = ("_args", "_base", "_generator", "_kinds", "_names", "_take")

    def __init__(
        self,
        base: AsyncIterableFlow[object],
        kinds: tuple[str, ...],
        args: tuple[object, ...],
        take: int | None,
        names: tuple[str, ...],
    ) -> None:
        self._base = base
        self._kinds = kinds
        self._args = args
        # The count of a final take, counted by the pump; None if none.
        self._take = take
        # Every operator applied, in order, for the repr.
        self._names = names
        self._generator = _compile(kinds, False, False)

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        base = self._base
        opened = base._open(subscriber)
        if opened is None:
            return
        loop, iterator = opened
        fused = cast("AsyncIterator[T]", self._generator(_iterate(iterator), base, *self._args))
        subscription = _FusedAsyncSubscription(subscriber, fused, iterator, loop, base, self._take)
        start(subscriber, subscription, self)

    def _with(self, kind: str, arg: object) -> FusedAsyncIterableFlow[object] | None:
        """This flow with one more stage, or None if the stage cannot be fused here."""
        plan = add_stage(self._kinds, self._args, self._take, kind, arg)
        if plan is None:
            return None
        kinds, args, take = plan
        return FusedAsyncIterableFlow(self._base, kinds, args, take, (*self._names, kind))

    def __repr__(self) -> str:
        return repr(self._base) + "".join(f".{name}(...)" for name in self._names)


def fuse_async(source: Flow[object], kind: str, arg: object) -> Flow[object] | None:
    """``source`` with ``kind(arg)`` fused in, if it is an async-iterable source; else None."""
    if type(source) is FusedAsyncIterableFlow:
        return source._with(kind, arg)
    if type(source) is AsyncIterableFlow:
        base = cast("AsyncIterableFlow[object]", source)
        return FusedAsyncIterableFlow(base, (), (), None, ())._with(kind, arg)
    return None


def direct_aiter(source: Flow[T]) -> AsyncGenerator[T, None] | None:
    """The consumer-fused ``aiter`` of an (optionally fused) async-iterable source, or None.

    None when ``source`` is anything else, or when its items must be pulled
    on a ``loop=`` other than the one running now (the bridge does that).
    """
    if type(source) is FusedAsyncIterableFlow:
        fused = cast("FusedAsyncIterableFlow[T]", source)
        base, kinds, args, take = fused._base, fused._kinds, fused._args, fused._take
    elif type(source) is AsyncIterableFlow:
        base = cast("AsyncIterableFlow[object]", source)
        kinds, args, take = (), (), None
    else:
        return None
    loop = base._loop
    if loop is not None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if running is not loop:
            return None
    generator = _compile(kinds, True, take is not None)
    counted = () if take is None else (take,)
    return cast("AsyncGenerator[T, None]", generator(base._iterable, base, *args, *counted))
