"""The terminal-state primitive: one ending, recorded with its error, delivered once."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from reactive_bp._core._terminal import COMPLETED, Terminal


class Boom(Exception):
    pass


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def test_open_then_completed_then_claimed_once() -> None:
    terminal = Terminal()
    assert terminal.ending is None and not terminal.is_ended and not terminal.is_closed
    assert terminal.complete()
    assert terminal.ending is COMPLETED and terminal.is_ended and not terminal.is_closed
    assert terminal.claim() is COMPLETED
    assert terminal.is_closed and not terminal.is_cancelled
    assert terminal.claim() is None


def test_error_is_recorded_with_ended(undeliverable: list[tuple[BaseException, str]]) -> None:
    terminal = Terminal()
    error = Boom("first")
    assert terminal.fail(error)
    ending = terminal.ending
    assert ending is not None and ending.error is error and not ending.eager
    assert not terminal.complete()  # the first ending wins
    late = Boom("late")
    assert not terminal.fail(late)
    assert [reported for reported, _ in undeliverable] == [late]
    claimed = terminal.claim()
    assert claimed is not None and claimed.error is error


def test_eager_failure_supersedes_a_waiting_ending(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    terminal = Terminal()
    delayed = Boom("upstream, behind queued items")
    assert terminal.fail(delayed)
    bad_request = Boom("Rule 3.9")
    assert terminal.fail(bad_request, eager=True)
    claimed = terminal.claim()
    assert claimed is not None and claimed.error is bad_request and claimed.eager
    assert [reported for reported, _ in undeliverable] == [delayed]

    completed = Terminal()
    completed.complete()
    assert completed.fail(bad_request, eager=True)  # a completion still waiting is replaced
    ending = completed.claim()
    assert ending is not None and ending.error is bad_request


def test_eager_failure_does_not_supersede_an_eager_one(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    terminal = Terminal()
    first = Boom("first")
    second = Boom("second")
    assert terminal.fail(first, eager=True)
    assert not terminal.fail(second, eager=True)
    assert not terminal.fail(Boom("quiet"), eager=True, quiet=True)
    assert [reported for reported, _ in undeliverable] == [second]


def test_finish_delivers_the_ending_recorded_first(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    terminal = Terminal()
    error = Boom("recorded in the gap")
    terminal.fail(error)
    ending = terminal.finish()  # the pass decided "complete"
    assert ending is not None and ending.error is error
    assert terminal.finish() is None
    assert undeliverable == []

    decided = Terminal()
    own = Boom("the pass's own error")
    ending = decided.finish(own)
    assert ending is not None and ending.error is own
    assert decided.finish(Boom("after")) is None
    assert len(undeliverable) == 1


def test_cancel_drops_a_waiting_ending_and_reports_later_errors(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    terminal = Terminal()
    terminal.fail(Boom("waiting"))
    assert terminal.cancel()
    assert not terminal.cancel()
    assert terminal.is_cancelled and terminal.is_closed
    assert terminal.claim() is None
    assert terminal.finish() is None
    assert undeliverable == []
    late = Boom("after cancel")
    assert not terminal.fail(late)
    assert [reported for reported, _ in undeliverable] == [late]


def _race_once() -> tuple[Boom, list[object]]:
    terminal = Terminal()
    error = Boom("x")
    delivered: list[object] = []
    start = threading.Barrier(3)

    def claimer() -> None:
        start.wait()
        while True:
            if terminal.ending is not None:
                claimed = terminal.finish()
                if claimed is not None:
                    delivered.append(claimed.error or "complete")
                return

    def failer() -> None:
        start.wait()
        terminal.fail(error)

    def completer() -> None:
        start.wait()
        terminal.complete()

    threads = [threading.Thread(target=t) for t in (claimer, failer, completer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return error, delivered


@pytest.mark.usefixtures("fast_switching")
def test_racing_writers_and_a_claimer_agree_on_one_ending(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """An error and a completion race a claimer: the claim sees an ending with its error.

    The claimer plays the drain loop: it spins until it sees "ended", then
    claims. It must never see "ended" without the error that ended it, and
    exactly one ending is delivered across all threads.
    """
    for _ in range(300):
        error, delivered = _race_once()
        assert len(delivered) == 1
        # Whichever came first was delivered; an error recorded first is never lost.
        if delivered == ["complete"]:
            assert [reported for reported, _ in undeliverable][-1:] == [error]
        else:
            assert delivered == [error]
        undeliverable.clear()


def test_an_upstream_error_never_supersedes_upstream_completion(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """Rule 1.7: an error after upstream completed is reported; the completion stands."""
    terminal = Terminal()
    terminal.complete()
    late = Boom("upstream broke Rule 1.7")
    assert not terminal.fail(late, eager=True, supersede=False)
    assert terminal.claim() is COMPLETED
    assert [reported for reported, _ in undeliverable] == [late]
