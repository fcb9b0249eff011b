"""`kdtui dashboard`: a Textual view of a live or finished run, fed only by RUN/events.jsonl.

Nothing in this package imports torch, transformers, datasets or accelerate: the dashboard must
start in well under a second and may run beside a training process on a busy machine.

    state.py     pure run-state model: fold events into series, evaluations and a status
    runs.py      summaries of the runs in a folder (the run browser's rows), teacher lookup,
                 the frontier of the evaluations cached in the runs
    frontier_plot.py  the Pareto frontier as a plotext picture (also `kdtui evaluate`'s)
    app.py       the app factory shared by the CLI and the tests
    launch.py    start a training command in a child process and follow it
    widgets/     one widget (or screen) per file
    dashboard.tcss  the one stylesheet
"""
