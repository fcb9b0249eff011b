"""What training and evaluation show on the terminal: the progress bar, notes and warnings
while a run trains, its summary when it ends, and `evaluate`'s report table. Rich is imported
when something is shown, so the command line starts quickly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


class ProgressListener:
    """Turns engine events into a Rich progress bar (step/total, loss, ETA) and eval lines on a
    terminal; notes, warnings and errors the run reports (a held-out dev split, a damaged
    checkpoint it skipped, emulated bf16) reach stderr whenever the bar is not silenced with
    --quiet, terminal or not. Info messages stay in events.jsonl and the dashboard."""

    def __init__(self, enabled: bool, warnings: bool = True, console: Any = None) -> None:
        self.enabled = enabled
        self.warnings = warnings
        self.console = console  # where the bar goes (default: stderr, beside the warnings)
        self.progress: Any = None
        self.task: Any = None

    def __call__(self, event: Any) -> None:
        kind = event.type
        if kind == "message" and event.level != "info" and self.progress is None:
            if self.warnings:
                typer.echo(f"{event.level}: {event.text}", err=True)
            return
        if not self.enabled:
            return
        if kind == "run_started":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                transient=False,
                console=self.console or Console(stderr=True),
            )
            self.progress.start()
            start = max(0, event.resumed_from_step)
            self.task = self.progress.add_task(
                event.command, total=event.total_steps, completed=start, loss="-"
            )
        elif self.progress is None:
            return
        elif kind == "step":
            self.progress.update(
                self.task, completed=event.step, total=event.total_steps, loss=f"{event.loss:.4f}"
            )
        elif kind == "eval":
            parts = "  ".join(f"{k} {v:.3f}" for k, v in event.accuracy.items() if v == v)
            mark = "  (best)" if event.best else ""
            self.progress.console.print(f"step {event.step}  dev accuracy: {parts}{mark}")
        elif kind == "message" and event.level != "info":
            from rich.markup import escape

            style = "cyan" if event.level == "note" else "yellow"
            # escape: a message may quote a setting in brackets ([prune.model]), not markup
            self.progress.console.print(f"[{style}]{event.level}:[/] {escape(event.text)}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def print_summary(path: Path, metrics: dict[str, Any], *, quiet: bool) -> None:
    typer.echo(f"run: {path}")
    if quiet:
        return
    students = metrics.get("domains")
    if isinstance(students, dict) and len(students) > 1:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"students ({metrics.get('method')})")
        for column in ("domain", "best dev (own domain)", "test (own domain)", "model"):
            table.add_column(column)
        for domain, m in students.items():
            test = m.get("test", {}).get(domain)
            table.add_row(
                domain,
                f"{m['best_dev']:.4f}" if m.get("best_dev") is not None else "-",
                f"{test:.4f}" if test is not None else "-",
                str(path / m["model"]),
            )
        Console().print(table)
        return
    timings = metrics.get("timings")
    if isinstance(timings, dict) and timings.get("total_s"):
        typer.echo(describe_timings(timings))
    test = metrics.get("test")
    if isinstance(test, dict):
        typer.echo("test accuracy: " + "  ".join(f"{k} {v:.4f}" for k, v in test.items()))
    if metrics.get("best_dev") is not None:
        typer.echo(f"best dev accuracy: {metrics['best_dev']:.4f} (step {metrics['best_step']})")
    if metrics.get("sparsity") is not None:
        from kdtui.rundir import RunLayout

        typer.echo(
            f"sparsity: {metrics['sparsity']:.4f} "
            f"({'at most' if metrics.get('soft_mask') == 'threshold' else 'target'} "
            f"{metrics['target_sparsity']:.4f}); "
            f"model: {RunLayout(path).model}"
        )
    sparse = metrics.get("sparse_model")
    if isinstance(sparse, dict):
        typer.echo(
            f"compressed: {path / sparse['path']} ({sparse['bytes'] / 2**20:.1f} MiB, encoder "
            f"Linear weights at {sparse['encoder_linear_ratio']:.1%} of their dense size)"
        )


# The parts of kdtui.timing's summary, as the end of a run names them.
TIMING_NAMES = {
    "train_s": "training steps",
    "dev_eval_s": "dev evaluation",
    "checkpoint_s": "checkpoints",
    "teacher_cache_s": "caching teacher logits",
    "banks_s": "CAP banks and teacher logits",
    "test_s": "test",
    "source_stats_s": "teacher statistics and agreement",
    "other_s": "loading and set-up",
}


def describe_timings(timings: dict[str, Any]) -> str:
    """'time 3:12: training steps 2:40 (83%), dev evaluation 0:09 (5%), ...'."""
    from kdtui.dashboard.fmt import duration

    total = float(timings["total_s"])
    parts = [
        f"{name} {duration(timings[key])} ({100 * timings[key] / total:.0f}%)"
        for key, name in TIMING_NAMES.items()
        if key in timings
    ]
    return f"time {duration(total)}: " + ", ".join(parts)


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    models = report["models"]
    table = Table(
        title=f"{report['split']} split of {report['data']} ({report['examples']} examples)"
    )
    table.add_column("")
    for m in models:
        table.add_column(m["model"], justify="right")
    for domain in [*report["domains"], "all"]:
        table.add_row(
            f"accuracy {domain}",
            *(f"{m['accuracy'][domain]:.4f}" if domain in m["accuracy"] else "-" for m in models),
        )
    table.add_row("parameters", *(f"{m['parameters']:,}" for m in models))
    table.add_row("non-zero parameters", *(f"{m['nonzero_parameters']:,}" for m in models))
    if any(m.get("encoder_sparsity") for m in models):
        table.add_row(
            "encoder Linear sparsity",
            *(
                f"{m['encoder_sparsity']:.1%}" if m.get("encoder_sparsity") is not None else "-"
                for m in models
            ),
        )
    table.add_row("size on disk", *(f"{m['size_bytes'] / 2**20:.1f} MiB" for m in models))
    if any("size_files" in m for m in models):
        table.add_row("weights file", *(", ".join(m.get("size_files", [])) for m in models))
    table.add_row("runtime", *(m.get("runtime", "pytorch") for m in models))
    for i, row in enumerate(models[0]["latency"]):
        label = f"latency b{row['batch']} len{row['length']}"
        table.add_row(label, *(f"{m['latency'][i]['ms']:.1f} ms" for m in models))
    sparse = [m.get("sparse_kernels", {}) for m in models]
    if any("latency" in s for s in sparse):
        for i, row in enumerate(models[0]["latency"]):
            label = f"latency b{row['batch']} len{row['length']}, sparse kernels"
            table.add_row(
                label,
                *(f"{s['latency'][i]['ms']:.1f} ms" if "latency" in s else "-" for s in sparse),
            )
        table.add_row(
            "accuracy all, sparse kernels",
            *(f"{s['accuracy']['all']:.4f}" if "accuracy" in s else "-" for s in sparse),
        )
    console.print(table)
    console.print(f"latency: median forward time on {report['threads']} CPU threads")
    for m, s in zip(models, sparse, strict=True):
        if s:
            line = f"sparse kernels ({m['model']}, {s['mode']}): {s['summary']}"
            if "max_logit_diff" in s:
                line += f"; max |logit difference| to dense kernels {s['max_logit_diff']:.2e}"
            console.print(line)
    for m in models:
        for note in m["notes"]:
            console.print(f"[yellow]note[/] ({m['model']}): {note}")
    if report.get("cached"):
        console.print(
            f"cached: {report['cached']} of {len(models)} models were not evaluated again (their "
            "files and the settings are unchanged); --no-cache evaluates them again"
        )
    if len(models) > 1 and report.get("frontier"):
        print_frontier(report, console)


PLOT_HEIGHT = 20
PLOT_MAX_WIDTH = 100


def print_frontier(report: dict[str, Any], console: Any) -> None:
    """The Pareto frontier under the report: one row per model with its accuracy and costs,
    ◆ beside a cost on whose frontier it is, then the accuracy-latency picture."""
    from rich.table import Table
    from rich.text import Text

    from kdtui.dashboard.frontier_plot import FRONTIER_MARKER, describe_shape, frontier_text
    from kdtui.frontier import accuracy_of, latency_at, latency_points

    frontier = report["frontier"]
    shapes = frontier["latency_by_batch"]
    table = Table(title=f"Pareto frontier ({FRONTIER_MARKER}: on it)")
    table.add_column("model")
    table.add_column("accuracy all", justify="right")
    table.add_column("size on disk", justify="right")
    for shape in shapes:
        table.add_column(f"latency b{shape['batch']} len{shape['length']}", justify="right")

    def marked(text: str, on: bool) -> str:
        return f"{text} {FRONTIER_MARKER}" if on else f"{text}  "

    for m in report["models"]:
        by_batch = m["frontier_latency_by_batch"]
        table.add_row(
            m["model"],
            f"{accuracy_of(m):.4f}",
            marked(f"{m['size_bytes'] / 2**20:.1f} MiB", m["frontier_size"]),
            *(
                marked(
                    f"{latency_at(m, s['batch'], s['length']):.1f} ms",
                    by_batch.get(str(s["batch"]), False),
                )
                for s in shapes
            ),
        )
    console.print(table)
    console.print(
        f"{FRONTIER_MARKER}: no other model is at least as accurate and at least as small (size) "
        "or fast (latency: the faster of dense and sparse kernels), and better in one"
    )
    points = latency_points(report)
    if frontier.get("latency") and points:
        shape = describe_shape(frontier["latency"])
        picture = frontier_text(
            points,
            width=min(console.width, PLOT_MAX_WIDTH),
            height=PLOT_HEIGHT,
            # Short: plotext leaves out a title wider than the picture.
            title=f"accuracy % against latency ms ({shape})",
            xlabel=f"latency ms, {shape}",
        )
        console.print(Text.from_ansi(picture))
