from __future__ import annotations

import math
from pathlib import Path

from kdtui.events import EVENT_TYPES, Eval, Message, RunStarted, Step, parse_event, parse_line
from kdtui.runlog import EventSink, read_events


def test_every_event_type_round_trips() -> None:
    samples = [
        RunStarted(
            run="r", command="teacher", profile="smoke", total_steps=3, config={"a": {"b": 1}}
        ),
        Step(
            step=1,
            total_steps=3,
            epoch=0.5,
            lr=1e-4,
            loss=0.7,
            losses={"ce": 0.7},
            metrics={"x": 1.0},
        ),
        Eval(step=1, split="dev", accuracy={"books": 0.5, "all": 0.5}, best=True),
        Message(level="warning", text="careful"),
    ]
    for event in samples:
        again = parse_event(event.to_json())
        assert again == event
    assert set(EVENT_TYPES) >= {
        "run_started",
        "step",
        "eval",
        "checkpoint",
        "run_finished",
        "run_failed",
    }


def test_non_finite_numbers_become_null() -> None:
    line = Step(
        step=1, total_steps=1, epoch=1.0, lr=0.1, loss=math.nan, losses={"ce": math.inf}
    ).to_json()
    assert "NaN" not in line and "Infinity" not in line
    assert parse_event(line).loss is None


def test_garbage_and_unknown_lines_are_skipped() -> None:
    assert parse_event("") is None
    assert parse_event("{not json") is None
    assert parse_event('{"type": "from_the_future", "x": 1}') is None
    assert parse_event('{"type": "step", "unexpected": 1}') is None
    assert parse_event("[1, 2]") is None


def test_parse_line_tells_unknown_types_apart_from_garbage() -> None:
    message = Message(level="info", text="hi")
    assert parse_line(message.to_json() + "\n") == (message, None)
    assert parse_line('{"type": "from_the_future", "x": 1}') == (None, "from_the_future")
    for garbage in ("", "{not json", "[1, 2]", '{"type": "step", "unexpected": 1}', '{"x": 1}'):
        assert parse_line(garbage) == (None, None)
    assert parse_line('{"type": [1]}') == (None, None)  # a type that is not a string


def test_sink_appends_and_repairs_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(Message(level="info", text="one").to_json() + "\n" + '{"type": "mess')
    sink = EventSink(path)
    sink.write(Message(level="info", text="two"))
    sink.close()
    texts = [e.text for e in read_events(path)]
    assert texts == ["one", "two"]
    assert EventSink(None).path is None  # non-main processes drop events
