"""How the dashboard keeps up with a fast-growing run, and with a very long finished one.

live:   a writer process appends step events (four loss terms and two sparsity metrics each, an
        eval every 500 steps) at RATE events/s for SECONDS, flushed per line as the engine does.
        The dashboard (headless Textual, the real app at SIZE) follows the file. Measured in the
        dashboard process: lag from an event's write time to the state holding it, lag from
        write time to the end of the redraw that shows it, how late a 20 Hz UI timer fires (what
        a key press would wait), redraws per second, CPU time over wall time, peak memory.
replay: open a finished 100,000-step run: time until everything is read, folded and drawn,
        and peak memory.

    python bench/dashboard.py                       # 500 events/s for 20 s, then the replay
    python bench/dashboard.py --rate 2000 --seconds 10 --no-replay
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdtui.dashboard.app import create_app
from kdtui.dashboard.widgets.run_screen import RunScreen
from kdtui.events import Eval, RunFinished, RunStarted, Step
from kdtui.runlog import FollowBatch


def step_event(s: int, total: int) -> Step:
    target = min(0.9, 0.9 * s / total)
    return Step(
        step=s,
        total_steps=total,
        epoch=s / 1000,
        lr=1e-4,
        loss=1.0 / (1 + s / 1000),
        losses={"ce": 0.5 / (1 + s / 500), "kd": 0.3, "prc_unsup": 1.2 - target, "fic_sup": 0.9},
        metrics={"sparsity/target": target, "sparsity/actual": target * 0.98},
    )


def eval_event(s: int) -> Eval:
    acc = {d: 0.5 + 0.3 * (s % 7) / 7 for d in ("books", "dvd", "electronics", "kitchen")}
    return Eval(step=s, split="dev", accuracy={**acc, "all": sum(acc.values()) / 4})


def write(path: Path, rate: int, seconds: float) -> None:
    """The writer process: RATE events/s in 10 ms ticks, each line flushed."""
    from kdtui.runlog import EventSink

    sink = EventSink(path)
    total = int(rate * seconds)
    sink.write(
        RunStarted(run="bench", command="prune", profile="bench", total_steps=total, config={})
    )
    tick, per_tick = 0.01, max(1, round(rate * 0.01))
    start = next_tick = time.time()
    s = 0
    while s < total:
        for _ in range(per_tick):
            s += 1
            sink.write(step_event(s, total))
            if s % 500 == 0:
                sink.write(eval_event(s))
        next_tick += tick
        time.sleep(max(0.0, next_tick - time.time()))
    sink.write(RunFinished(step=s, metrics={}))
    sink.close()
    print(f"writer: {s} steps in {time.time() - start:.1f} s", file=sys.stderr)


class Probe:
    """Timings gathered in the dashboard process (lists of seconds)."""

    def __init__(self) -> None:
        self.state_lag: list[float] = []
        self.draw_lag: list[float] = []
        self.timer_late: list[float] = []
        self.folded = 0


def instrument(screen: RunScreen, probe: Probe) -> None:
    fold, refresh = screen.fold_batch, screen.refresh_panels

    def fold_batch(batch: FollowBatch) -> bool:
        changed = fold(batch)
        if batch.events:
            probe.folded += len(batch.events)
            probe.state_lag.append(time.time() - batch.events[-1].time)
        return changed

    def refresh_panels() -> None:
        newest = screen.state.last_event_at
        refresh()
        if newest is not None:
            screen.call_after_refresh(lambda: probe.draw_lag.append(time.time() - newest))

    screen.fold_batch = fold_batch  # type: ignore[method-assign]
    screen.refresh_panels = refresh_panels  # type: ignore[method-assign]


async def live(rate: int, seconds: float, size: tuple[int, int]) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "bench"
        run.mkdir()
        probe = Probe()
        app = create_app(run)
        async with app.run_test(size=size) as pilot:
            while not isinstance(app.screen, RunScreen):
                await pilot.pause(0.01)
            screen = app.screen
            instrument(screen, probe)
            redraws0 = screen.refreshes
            writer = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--write",
                    str(run / "events.jsonl"),
                    "--rate",
                    str(rate),
                    "--seconds",
                    str(seconds),
                ]
            )
            period = 0.05

            last: list[float] = []

            def tick() -> None:
                now = time.monotonic()
                if last:
                    probe.timer_late.append(max(0.0, now - last[-1] - period))
                last[:] = [now]

            timer = screen.set_interval(period, tick)
            cpu0, wall0 = _cpu(), time.monotonic()
            while writer.poll() is None:
                await pilot.pause(0.1)
            while screen.state.outcome is None or not screen.settled:
                await pilot.pause(0.05)
            wall, cpu = time.monotonic() - wall0, _cpu() - cpu0
            timer.stop()
            redraws = screen.refreshes - redraws0
            steps = screen.state.step
    return {
        "events written": f"{steps + steps // 500 + 2:,} ({rate}/s for {seconds:g} s)",
        "events folded": f"{probe.folded:,}",
        "write -> state lag p50 / p95 / max": _ms(probe.state_lag),
        "write -> redrawn lag p50 / p95 / max": _ms(probe.draw_lag),
        "20 Hz UI timer late p50 / p95 / max": _ms(probe.timer_late),
        "redraws per second": f"{redraws / wall:.1f}",
        "CPU (dashboard process, % of one core)": f"{100 * cpu / wall:.0f}%",
        "peak memory (RSS)": f"{_rss_mib():.0f} MiB",
    }


async def replay(steps: int, size: tuple[int, int]) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "long"
        run.mkdir()
        with open(run / "events.jsonl", "w", encoding="utf-8") as f:
            f.write(
                RunStarted(
                    run="long", command="prune", profile="bench", total_steps=steps, config={}
                ).to_json()
                + "\n"
            )
            for s in range(1, steps + 1):
                f.write(step_event(s, steps).to_json() + "\n")
                if s % 500 == 0:
                    f.write(eval_event(s).to_json() + "\n")
            f.write(RunFinished(step=steps, metrics={}).to_json() + "\n")
        size_mib = (run / "events.jsonl").stat().st_size / 2**20
        app = create_app(run)
        start = time.monotonic()
        async with app.run_test(size=size) as pilot:
            while not (
                isinstance(app.screen, RunScreen)
                and app.screen.state.outcome
                and app.screen.settled
            ):
                await pilot.pause(0.05)
            took = time.monotonic() - start
            points = max(len(s) for s in app.screen.state.losses.values())
    return {
        "replay file": f"{steps:,} steps, {size_mib:.0f} MiB",
        "replay: open to fully drawn": f"{took:.1f} s",
        "replay: points kept per loss term": f"{points:,}",
        "replay: peak memory (RSS)": f"{_rss_mib():.0f} MiB",
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"{1000 * statistics.median(ordered):.0f} / {1000 * p95:.0f} / {1000 * ordered[-1]:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=500, help="events per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="160x48", help="terminal size COLSxROWS")
    parser.add_argument("--replay-steps", type=int, default=100_000)
    parser.add_argument("--no-replay", action="store_true")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write is not None:
        write(args.write, args.rate, args.seconds)
        return
    cols, rows = (int(v) for v in args.size.split("x"))
    results = asyncio.run(live(args.rate, args.seconds, (cols, rows)))
    if not args.no_replay:
        # A fresh process, so the replay's peak memory is its own.
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--replay-only",
                str(args.replay_steps),
                "--size",
                args.size,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results.update(dict(line.split("\t", 1) for line in out.stdout.splitlines()))
    width = max(len(k) for k in results)
    print(f"kdtui dashboard benchmark (terminal {args.size}, headless)")
    for key, value in results.items():
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--replay-only":
        size = sys.argv[4] if len(sys.argv) > 4 else "160x48"
        c, r = (int(v) for v in size.split("x"))
        for k, v in asyncio.run(replay(int(sys.argv[2]), (c, r))).items():
            print(f"{k}\t{v}")
    else:
        main()
