"""A stand-in training process for the launch tests (no torch): writes a step every 50 ms to
RUN/events.jsonl and, like the engine, answers SIGINT with run_failed(kind="interrupted") and
exit code 130.  Usage: python tests/fake_trainer.py RUN_DIR"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from kdtui.events import RunFailed, RunStarted, Step
from kdtui.runlog import EventSink

stop = False


def on_sigint(signum: int, frame: object) -> None:
    global stop
    stop = True


def main() -> int:
    run = Path(sys.argv[1])
    signal.signal(signal.SIGINT, on_sigint)
    sink = EventSink(run / "events.jsonl")
    total = 100_000
    sink.write(
        RunStarted(run=run.name, command="teacher", profile="fake", total_steps=total, config={})
    )
    print("fake trainer started", flush=True)
    for s in range(1, total + 1):
        if stop:
            sink.write(
                RunFailed(step=s - 1, error="interrupted; resume with --resume", kind="interrupted")
            )
            sink.close()
            return 130
        sink.write(
            Step(step=s, total_steps=total, epoch=0.0, lr=1e-3, loss=1 / s, losses={"ce": 1 / s})
        )
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
