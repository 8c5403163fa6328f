"""Quick start: a consumer that asks for items in batches, and what the producer sees."""

from __future__ import annotations

from collections.abc import Iterator

from reactive_bp import Flow, RequestPolicy


def sensor() -> Iterator[int]:
    """A producer that could run forever; it is pulled only as far as demand allows."""
    reading = 0
    while True:
        reading += 1
        yield reading


def main() -> None:
    requests: list[int] = []
    total = 0

    def consume(value: int) -> None:
        nonlocal total
        total += value

    (
        Flow.from_iterable(sensor())
        .do_on_request(requests.append)  # watch the demand that flows upstream
        .map(lambda x: x * 10)
        .filter(lambda x: x % 20 == 0)
        .take(1000)  # caps what is requested upstream, too
        .subscribe_with(consume, request=RequestPolicy.batch(64))
    )
    print(f"sum of 1000 readings: {total}")
    print(f"upstream was asked {len(requests)} times, at most {max(requests)} items at once")
    assert total == sum(x * 10 for x in range(2, 2001, 2))


if __name__ == "__main__":
    main()
