"""How a stream ends: the one terminal-state primitive every drain loop uses.

A stream with a drain loop learns that it is over on one thread (an upstream
``on_error`` or ``on_complete``, a bad ``request``, a raising callback) and
acts on it on another (the thread that owns the drain loop). The bug this type
exists to make impossible: a "done" flag becomes visible before the error is
stored, a drain pass in that gap sees "done and nothing queued" and signals
``on_complete`` -- a failed stream that looks successful.

``Terminal`` makes the ending and the error one value. ``ending`` is a single
attribute read, so a reader sees either "open" (``None``) or an ``Ending``
whose ``error`` is already set; there is no state in which the stream is done
but its error is not yet known.

Lifecycle (each arrow taken under ``_lock``, at most once):

* open -> ended: ``complete()`` or ``fail(error)`` records how the stream
  ends. The first recording wins; a later one is not delivered: a late error
  goes to the undeliverable hook (Rule 1.7), a late completion is ignored.
  One exception: an *eager* failure (one that must cut ahead of queued items:
  a Rule 3.9 bad request, a raising callback, an overflow) supersedes a
  recorded ending that is not eager and not yet delivered; the superseded
  error, if any, goes to the hook. An upstream error never supersedes
  (``supersede=False``): after upstream's own completion it breaks Rule 1.7
  and is reported, and the completion stands.
* ended -> closed: ``claim()`` hands the ending to the one thread that
  delivers it (the drain loop owner). Afterwards nothing more is delivered.
* open/ended -> closed: ``cancel()`` (downstream cancelled). An ending that was
  recorded but not yet claimed is discarded -- the subscriber asked to hear
  nothing more -- and every later error goes to the hook.

How operators use it (and why the order matters):

* Record the terminal *before* publishing anything that lets a drain pass
  decide the stream is over (an inner source's ``done`` flag, say).
* A drain pass that decides on its own that the stream is complete (all
  sources done and nothing queued) does not signal ``on_complete``: it calls
  ``complete()`` and then ``claim()``, and delivers what ``claim()`` returns.
  If an error was recorded first -- in any gap -- ``complete()`` loses and the
  error is what gets delivered.
"""

from __future__ import annotations

import threading
from typing import Final

from ._hooks import report_undeliverable

__all__ = ["COMPLETED", "Ending", "Terminal"]


class Ending:
    """An immutable record of how a stream ended: ``error is None`` means completed."""

    __slots__ = ("eager", "error")

    def __init__(self, error: Exception | None, eager: bool = False) -> None:
        self.error: Final = error
        # Whether the ending cuts ahead of items still queued.
        self.eager: Final = eager

    def __repr__(self) -> str:
        if self.error is None:
            return "Ending(completed)"
        return f"Ending(error={self.error!r}, eager={self.eager})"


COMPLETED: Final = Ending(None)
"""The ending of a stream that completed normally."""


class Terminal:
    """The terminal state of one stream: open, ended (completed or failed), closed.

    Thread-safe. ``_lock`` is a leaf lock: nothing is called while it is held,
    so it may be taken while holding any other lock.
    """

    __slots__ = ("_cancelled", "_closed", "_ending", "_lock", "origin")

    def __init__(self, origin: object = None) -> None:
        self._lock = threading.Lock()
        # Invariant: written only under _lock; None while the stream is open.
        # An Ending carries its error, so "ended" and "why" are one read.
        self._ending: Ending | None = None
        # Invariant: written only under _lock, once: the ending was claimed for
        # delivery or downstream cancelled; nothing more will be delivered.
        self._closed = False
        # Written only under _lock, once: closed by cancel() rather than claim().
        self._cancelled = False
        # What the undeliverable hook is told the late errors came from.
        self.origin = origin

    # -- recording (any thread) ---------------------------------------------------------

    def complete(self) -> bool:
        """Record completion; ``False`` if the stream had already ended or closed."""
        with self._lock:
            if self._ending is not None or self._closed:
                return False
            self._ending = COMPLETED
            return True

    def fail(
        self,
        error: Exception,
        *,
        eager: bool = False,
        quiet: bool = False,
        supersede: bool | None = None,
    ) -> bool:
        """Record ``error`` as the ending; ``False`` (and reported) if it came too late.

        ``eager``: the error cuts ahead of queued items. ``supersede`` (by
        default the same as ``eager``): it replaces an unclaimed ending that
        is not eager, whose error is reported to the undeliverable hook. An
        upstream error is eager in operators that do not delay errors, but
        never supersedes: an error after upstream's completion breaks Rule
        1.7 and is reported, the completion stands. With ``quiet`` a late
        ``error`` is not reported (a Rule 3.9 bad request after the end is a
        no-op, Rule 3.6).
        """
        if supersede is None:
            supersede = eager
        superseded: Exception | None = None
        with self._lock:
            current = self._ending
            if current is not None and current.error is error:
                return False  # the very error the stream already ends with: not news
            accepted = not self._closed and (current is None or (supersede and not current.eager))
            if accepted:
                self._ending = Ending(error, eager)
                if current is not None:
                    superseded = current.error
        if not accepted and not quiet:
            report_undeliverable(error, f"{self._where()} after terminal/cancel (Rule 1.7)")
        elif superseded is not None:
            report_undeliverable(superseded, f"{self._where()}: superseded by {error!r}")
        return accepted

    def cancel(self) -> bool:
        """Close because downstream cancelled; ``False`` if already closed."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._cancelled = True
            return True

    # -- delivering (the drain loop owner) ------------------------------------------------

    def claim(self) -> Ending | None:
        """Take the ending for delivery, once; ``None`` while open or once closed."""
        with self._lock:
            if self._closed or self._ending is None:
                return None
            self._closed = True
            return self._ending

    def finish(self, error: Exception | None = None, *, eager: bool = True) -> Ending | None:
        """Record ``error`` (or completion) unless already ended, then ``claim()``.

        What a drain pass calls when it decides the stream is over: the ending
        it delivers is whatever was recorded first, so an error recorded in
        any gap before this call wins over the completion the pass decided on.
        """
        superseded: Exception | None = None
        late = False
        with self._lock:
            if self._closed:
                ending = None
                late = error is not None
            else:
                current = self._ending
                if current is None or (error is not None and eager and not current.eager):
                    self._ending = COMPLETED if error is None else Ending(error, eager)
                    if current is not None:
                        superseded = current.error
                elif error is not None and current.error is not error:
                    late = True  # an earlier ending wins
                self._closed = True
                ending = self._ending
        if late:
            assert error is not None
            report_undeliverable(error, f"{self._where()} after terminal/cancel (Rule 1.7)")
        if superseded is not None:
            report_undeliverable(superseded, f"{self._where()}: superseded by {error!r}")
        return ending

    # -- reading (any thread, no lock) ------------------------------------------------------

    @property
    def ending(self) -> Ending | None:
        """How the stream ended, or ``None`` while open: one consistent snapshot."""
        return self._ending

    @property
    def is_ended(self) -> bool:
        """Whether an ending was recorded (it may not be delivered yet)."""
        return self._ending is not None

    @property
    def is_cancelled(self) -> bool:
        """Whether downstream cancelled before the ending was claimed."""
        return self._cancelled

    @property
    def is_closed(self) -> bool:
        """Whether the ending was claimed or downstream cancelled."""
        return self._closed

    def _where(self) -> str:
        return repr(self.origin) if self.origin is not None else "stream"

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._ending is None:
            state = "open"
        else:
            state = "ended"
        return f"<Terminal {state} {self._ending!r}>"
