"""Log lines: JSON objects with the context they concern, text lines that show it, and a throttle that keeps a
flood of refusals from filling a disk."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from worker.logs import Throttle, configure_logging, log_context


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_json_lines_carry_the_bound_context_and_extra_fields(restore_root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)

    with log_context(source="acme", product="42"):
        logging.getLogger("worker.push").warning("push failed: %s", "503", extra={"run": 7})
    logging.getLogger("worker.push").info("outside any context")
    logging.getLogger("worker.push").debug("below the level")

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["message"] == "push failed: 503"
    assert (first["level"], first["logger"]) == ("WARNING", "worker.push")
    assert (first["source"], first["product"], first["run"]) == ("acme", "42", 7)
    assert first["time"].endswith("Z")
    assert "context" not in first
    assert "source" not in second and second["message"] == "outside any context"


def test_an_explicit_extra_field_wins_over_the_bound_context(restore_root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)

    with log_context(source="outer"):
        logging.getLogger("t").info("x", extra={"source": "inner"})

    assert json.loads(stream.getvalue())["source"] == "inner"


def test_an_exception_is_serialised_into_the_json_line(restore_root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)

    try:
        raise ValueError("bad row")
    except ValueError:
        logging.getLogger("t").exception("could not apply")

    line = json.loads(stream.getvalue())
    assert line["message"] == "could not apply"
    assert "ValueError: bad row" in line["exc_info"]


def test_text_lines_show_the_context_after_the_message(restore_root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "text", stream=stream)

    with log_context(source="acme", product="42", account=None):
        logging.getLogger("worker.push").info("pushed")

    assert stream.getvalue().rstrip().endswith("INFO worker.push: pushed [source=acme product=42]")


def test_configuring_again_replaces_the_handler_instead_of_doubling_lines(restore_root_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "text", stream=first)
    configure_logging("INFO", "json", stream=second)

    logging.getLogger("t").info("once")

    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_the_throttle_allows_a_burst_then_counts_what_it_refuses_and_reports_it_later() -> None:
    clock = FakeClock()
    throttle = Throttle(rate=1.0, burst=3, clock=clock)

    allowed = [throttle.allow("shop") for _ in range(5)]
    other_key = throttle.allow("woo")
    clock.now += 1.0
    after_a_second = throttle.allow("shop")
    next_one = throttle.allow("shop")

    assert allowed == [(True, 0), (True, 0), (True, 0), (False, 1), (False, 2)]
    assert other_key == (True, 0)
    assert after_a_second == (True, 2)
    assert next_one == (False, 1)
