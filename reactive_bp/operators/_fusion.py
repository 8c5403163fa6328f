"""Assembly-time fusion: a synchronous chain over an iterable becomes one pull loop.

``Flow.from_iterable(xs).map(f).filter(p).take(k)`` unfused is a source and
three operator subscribers, and every item costs a method call per operator
plus the operator's own checks. Fused (Reactor's *macro-fusion*), calling
``.map`` on a source built by ``from_iterable``, ``range`` or ``just`` returns
a new source, :class:`FusedIterableFlow`, that remembers the stages. At
subscribe time the stages are compiled into **one generator** over the
source's iterator, and the ordinary ``PullSubscription`` drain pulls it with
``islice`` exactly as far as demand allows.

Fusable stages: ``map``, ``filter``, ``skip``, ``skip_while``, ``take_while``
and ``take`` (``take`` must be the last stage other than ``map``; any other
operator, or a fusable one over a flow that is not fusable, is lifted as
usual). Flows stay immutable: fusing returns a new flow, and the original
keeps working and can be subscribed to any number of times.

How the semantics stay those of the unfused chain:

* Demand: the generator yields one item per resume and the drain resumes it
  at most ``n`` times for ``request(n)``, so nothing is pulled beyond demand.
  A ``filter`` or ``skip`` pulls until an item passes, as the unfused chain
  does through the conditional fast path. ``take(k)`` is not in the
  generator: the subscription counts it, so the ``k``-th item completes the
  stream at once, without waiting for more demand, and the source is never
  asked for item ``k + 1`` (as ``take`` caps upstream demand at ``k``).
  ``take(0)`` is left to the operator (it completes on subscribe).
* Errors: a raising mapper, predicate or source iterator ends the generator;
  the drain signals that very exception object and closes the source (the
  unfused operator would have cancelled upstream). A ``StopIteration`` raised
  by a user function is carried out of the generator (PEP 479 would turn it
  into a ``RuntimeError``) and signalled as itself.
* ``None`` (Rule 2.13): checked after the source and after every ``map``, in
  the same order and with the same error types and messages as the unfused
  operators (``NoneItemError`` naming the source, or the mapper and the
  item), so no user function ever sees ``None``.
* Cancellation: the drain stops resuming the generator; release closes the
  generator and then the source iterator (a generator source's ``finally``
  runs at cancel, not at garbage collection).

Why a generated generator and not ``map(f, filter(p, it))`` from C: the C
builtins cannot check for ``None`` between stages without a Python call per
stage and item (measured: that check costs about as much as it saves); one
generator with the checks inlined calls each user function once per item and
nothing else, and runs as fast as the unchecked C chain.
The generated source is built only from the fixed templates below and the
stage positions, never from user data; it is compiled once per sequence of
stage kinds and cached.
"""

from __future__ import annotations

import functools
import linecache
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from typing_extensions import override

from .._core._drain import SubscriberFault
from .._core._operator import EmptySubscription
from .._core._signals import signal_error
from .._flow import Flow
from ..sources._iterable import IterableFlow, NoneItemError, _IteratorSubscription

if TYPE_CHECKING:
    from ..abc import Subscriber

__all__ = ["FusedIterableFlow", "fuse"]

T = TypeVar("T")

_MAP = "map"
_FILTER = "filter"
_SKIP = "skip"
_SKIP_WHILE = "skip_while"
_TAKE_WHILE = "take_while"
_TAKE = "take"

# One template per stage kind; ``{i}`` is the stage position. Each reads and
# rebinds ``item``; ``continue`` drops the item, ``return`` ends the stream.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    _MAP: (
        "value = arg{i}(item)",
        "if value is None:",
        "    raise NoneItemError(",
        "        f'map: {{arg{i}!r}} returned None for {{item!r}}; None is not an item'",
        "    )",
        "item = value",
    ),
    _FILTER: (
        "if not arg{i}(item):",
        "    continue",
    ),
    _SKIP: (
        "if arg{i}:",
        "    arg{i} -= 1",
        "    continue",
    ),
    _SKIP_WHILE: (
        "if skipping{i}:",
        "    if arg{i}(item):",
        "        continue",
        "    skipping{i} = False",
    ),
    _TAKE_WHILE: (
        "if not arg{i}(item):",
        "    return",
    ),
}


class CallbackStopIteration(Exception):
    """Carries a ``StopIteration`` raised by a user function out of the generator.

    Without it PEP 479 turns the exception into ``RuntimeError`` (and, in an
    async generator, ``StopAsyncIteration`` too); the subscription unwraps
    it, so downstream sees the original object, as it would from the unfused
    operator.
    """

    __slots__ = ("stop",)

    def __init__(self, stop: StopIteration | StopAsyncIteration) -> None:
        super().__init__(stop)
        self.stop = stop


FusedGenerator = Callable[..., Iterator[object]]


@functools.lru_cache(maxsize=256)
def _compile(kinds: tuple[str, ...], check_source: bool) -> FusedGenerator:
    """Return the generator function for this sequence of stage kinds (cached).

    Its parameters are ``(source, origin, arg0, arg1, ...)``: the source
    iterator, the source flow (named by a ``NoneItemError``) and one argument
    per stage (a function, or a count for ``skip``).
    """
    params = ", ".join(["source", "origin", *(f"arg{i}" for i in range(len(kinds)))])
    lines = [f"def fused({params}):"]
    lines += [f"    skipping{i} = True" for i, kind in enumerate(kinds) if kind == _SKIP_WHILE]
    lines += ["    try:", "        for item in source:"]
    body: list[str] = []
    if check_source:
        body += ["if item is None:", "    raise NoneItemError(f'{origin!r} produced None')"]
    for i, kind in enumerate(kinds):
        body += [line.format(i=i) for line in _TEMPLATES[kind]]
    body.append("yield item")
    lines += ["            " + line for line in body]
    lines += [
        "    except StopIteration as stop:  # from a user function, not from the source",
        "        raise CallbackStopIteration(stop) from None",
    ]
    text = "\n".join(lines) + "\n"
    checked = " checked" if check_source else ""
    filename = f"<reactive_bp fused {'.'.join(kinds) or 'source'}{checked}>"
    namespace: dict[str, object] = {
        "NoneItemError": NoneItemError,
        "CallbackStopIteration": CallbackStopIteration,
    }
    # Safe: the text comes from the fixed templates above and stage positions only.
    exec(compile(text, filename, "exec"), namespace)
    # Tracebacks through the generated code show its lines.
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    return cast("FusedGenerator", namespace["fused"])


class _FusedSubscription(_IteratorSubscription[T]):
    """Drains the fused generator and closes the source iterator on release."""

    __slots__ = ("_source_iterator",)

    def __init__(
        self,
        actual: Subscriber[T],
        iterator: Iterator[T],
        source_iterator: Iterator[object],
        source: object,
    ) -> None:
        super().__init__(actual, iterator, source)
        self._source_iterator = source_iterator

    @override
    def _finish(self, actual: Subscriber[T], error: Exception | None = None) -> None:
        if type(error) is CallbackStopIteration:
            error = error.stop  # the user function's own exception object
        super()._finish(actual, error)

    @override
    def _on_release(self) -> None:
        try:
            super()._on_release()  # closes the generator
        finally:
            close = getattr(self._source_iterator, "close", None)
            self._source_iterator = iter(())
            if close is not None:
                close()


class _FusedTakeSubscription(_FusedSubscription[T]):
    """A fused subscription that also counts a final ``take``.

    A separate class so that chains without a take pay nothing for it per batch.
    """

    __slots__ = ("_remaining",)

    def __init__(
        self,
        actual: Subscriber[T],
        iterator: Iterator[T],
        source_iterator: Iterator[object],
        source: object,
        take: int,
    ) -> None:
        super().__init__(actual, iterator, source_iterator, source)
        # Items the take still lets through (> 0 until it completes). Touched
        # only by the drain loop owner (Rule 1.3), so it needs no lock.
        self._remaining = take

    @override
    def _emit(self, actual: Subscriber[T], n: int) -> int:
        remaining = self._remaining
        try_on_next = self._try_on_next
        if try_on_next is not None:
            return self._emit_counted(actual, try_on_next, n, remaining)
        # ``take`` caps the batch: the source is never asked for item k + 1.
        limit = n if n < remaining else remaining
        emitted = super()._emit(actual, limit)
        remaining -= emitted
        self._remaining = remaining
        if remaining == 0 and not self._stopped:
            self._finish(actual)  # the k-th item completes at once, as take does
        return emitted

    def _emit_counted(
        self, actual: Subscriber[T], try_on_next: Callable[[T], bool], n: int, remaining: int
    ) -> int:
        # Conditional downstream under a take: every item offered counts
        # against the take, only accepted ones against demand (as the unfused
        # take's hook_try_on_next does).
        emitted = 0
        try:
            for item in self._iterator:  # the generator never yields None
                try:
                    accepted = try_on_next(item)
                except Exception as fault:
                    self._remaining = remaining - 1
                    raise SubscriberFault(fault) from None
                remaining -= 1
                if accepted:
                    emitted += 1
                if remaining == 0:
                    break
                if emitted == n or self._stopped:
                    self._remaining = remaining
                    return emitted
        except SubscriberFault:
            raise
        except Exception as error:
            self._finish(actual, error)
            return emitted
        self._remaining = remaining
        self._finish(actual)  # exhausted, or the take is complete
        return emitted


class FusedIterableFlow(Flow[T], Generic[T]):
    """An iterable source with fused stages: one generator, one subscription.

    Immutable: each fusable operator returns a new ``FusedIterableFlow``.
    """

    __slots__ = ("_args", "_base", "_generator", "_kinds", "_names", "_take")

    def __init__(
        self,
        base: IterableFlow[object],
        kinds: tuple[str, ...],
        args: tuple[object, ...],
        take: int | None,
        names: tuple[str, ...],
    ) -> None:
        self._base = base
        self._kinds = kinds
        self._args = args
        # The count of a final take, counted by the subscription; None if none.
        self._take = take
        # Every operator applied, in order, for the repr.
        self._names = names
        self._generator = _compile(kinds, _may_yield_none(base))

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        base = self._base
        try:
            source_iterator = iter(base._iterable)
        except Exception as error:
            subscriber.on_subscribe(EmptySubscription())
            signal_error(subscriber, error, self)
            return
        fused = cast("Iterator[T]", self._generator(source_iterator, base, *self._args))
        take = self._take
        if take is None:
            _FusedSubscription(subscriber, fused, source_iterator, base).start()
        else:
            _FusedTakeSubscription(subscriber, fused, source_iterator, base, take).start()

    def _with(self, kind: str, arg: object) -> FusedIterableFlow[object] | None:
        """This flow with one more stage, or None if the stage cannot be fused here."""
        plan = add_stage(self._kinds, self._args, self._take, kind, arg)
        if plan is None:
            return None
        kinds, args, take = plan
        return FusedIterableFlow(self._base, kinds, args, take, (*self._names, kind))

    def __repr__(self) -> str:
        return repr(self._base) + "".join(f".{name}(...)" for name in self._names)


Plan = tuple[tuple[str, ...], tuple[object, ...], int | None]


def add_stage(
    kinds: tuple[str, ...], args: tuple[object, ...], take: int | None, kind: str, arg: object
) -> Plan | None:
    """The stages and final take after fusing ``kind(arg)``; None if it cannot be fused.

    The one rule of what fuses, for iterable and async-iterable sources alike.
    """
    if kind == _TAKE:
        count = cast("int", arg)
        if count == 0:
            return None  # take(0) completes on subscribe: leave it to the operator
        return kinds, args, count if take is None else min(take, count)
    if take is not None and kind != _MAP:
        # Only a 1:1 stage commutes with the take counted at the end.
        return None
    return (*kinds, kind), (*args, arg), take


def _may_yield_none(base: IterableFlow[object]) -> bool:
    # range yields ints; just() refused None when it was built (and keeps a tuple).
    return not isinstance(base._iterable, range) and base._name != "just"


def fuse(source: Flow[object], kind: str, arg: object) -> Flow[object] | None:
    """Return ``source`` with the stage ``kind(arg)`` fused in, or None if it cannot be.

    ``source`` is fusable when it is an iterable source (``from_iterable``,
    ``range``, ``just``), an async-iterable source (``from_async_iterable``,
    ``from_queue``: see ``_async_fusion.py``) or already a fused flow;
    ``arg`` is the stage's function, or its count for ``skip`` and ``take``
    (validated by the caller).
    """
    if type(source) is FusedIterableFlow:
        return source._with(kind, arg)
    if type(source) is IterableFlow:
        base = cast("IterableFlow[object]", source)
        return FusedIterableFlow(base, (), (), None, ())._with(kind, arg)
    return _async_fusion.fuse_async(source, kind, arg)


# The async counterpart reuses the templates above; bound last, as it imports them.
from . import _async_fusion  # noqa: E402
