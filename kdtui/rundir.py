"""The run directory: the unit a user keeps. Its layout is written down here and nowhere else:
`RunDir` writes a run, `RunInfo` reads one (`read_run`), and both name its parts through
`RunLayout`.

    RUN/config.toml     the fully resolved config (a profile: `--profile RUN/config.toml` reruns it)
    RUN/events.jsonl    append-only event log (the dashboard's only input)
    RUN/checkpoints/    atomic checkpoints for --resume
    RUN/best/           the best weights so far (by dev accuracy)
    RUN/model/          the final model in Hugging Face layout
    RUN/model-sparse/   `kdtui prune`'s compressed copy of RUN/model (unstructured pruning)
    RUN/metrics.json    the final summary (written as the run finishes)
    RUN/test_predictions.json   the best model's test predictions, in split order
    RUN/prototype_scores.safetensors   a meta-teacher's prototype scores (read by distill)
    RUN/domains/D/      `kdtui distill --domain all`: one student's model, best, checkpoints
                        and test predictions per domain D; RUN/summary.md compares them
    RUN/error.log       the traceback of an unexpected error
    RUN/.lock           held by the one process writing the run (removed when it ends)

Only the main process writes (and locks); other processes get a RunDir whose writes are no-ops.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kdtui.errors import KdtuiError
from kdtui.events import Event, RunFailed, RunStarted, parse_record
from kdtui.runlog import EventSink, read_events
from kdtui.timing import Stopwatch

if TYPE_CHECKING:
    from kdtui.config import Config

CONFIG_FILE = "config.toml"
EVENTS_FILE = "events.jsonl"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
MODEL_DIR = "model"
SPARSE_DIR = "model-sparse"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "test_predictions.json"
SCORES_FILE = "prototype_scores.safetensors"
DOMAINS_DIR = "domains"
SUMMARY_FILE = "summary.md"
ERROR_LOG = "error.log"
LOCK_FILE = ".lock"
MODEL_CONFIG = "config.json"  # what makes a folder a saved Hugging Face model
DOMAIN_HEAD_FILE = "domain_head.safetensors"  # in a meta-teacher's model folder


# ---------------------------------------------------------------------------------------------
# Where things are


class RunLayout:
    """Where each part of a run directory is: paths only, nothing is read or written. A student
    of `kdtui distill --domain all` has the same layout for its own parts (`student`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config_file = path / CONFIG_FILE
        self.events_file = path / EVENTS_FILE
        self.checkpoints = path / CHECKPOINTS_DIR
        self.best = path / BEST_DIR
        self.model = path / MODEL_DIR
        self.sparse_model = path / SPARSE_DIR
        self.metrics_file = path / METRICS_FILE
        self.predictions_file = path / PREDICTIONS_FILE
        self.scores_file = path / SCORES_FILE
        self.error_log = path / ERROR_LOG

    def student(self, domain: str) -> RunLayout:
        return RunLayout(self.path / DOMAINS_DIR / domain)


# ---------------------------------------------------------------------------------------------
# Reading a run


def read_profile(path: Path) -> dict[str, Any]:
    """A profile (TOML) as a nested dict; a run's config.toml is one, hence this module owns it
    (`kdtui.profile` finds profiles, runs among them, so it sits above)."""
    try:
        # utf-8-sig: editors on Windows start a UTF-8 file with a byte-order mark, which TOML
        # does not allow and which is invisible to whoever reads the file.
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise KdtuiError(
            f"profile {path} is not UTF-8 text (line {line}: byte 0x{e.object[e.start]:02x})"
        ) from None
    except OSError as e:
        raise KdtuiError(f"cannot read profile {path}: {e.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise KdtuiError(f"profile {path} is not valid TOML: {e}") from None


RunStatus = Literal["running", "finished", "failed", "stopped"]


class RunInfo(RunLayout):
    """A run directory, read. Every method reads the disk when it is called, so a live run's
    answers change; a part that is not there yet reads as nothing (no command, no metrics), so
    a run that is only starting can be read too. `read_run` checks that a folder is a run."""

    def config_dict(self) -> dict[str, Any]:
        """The recorded config.toml as a profile (nested dict), as the run was started."""
        return read_profile(self.config_file)

    def config(self) -> Config:
        """The recorded config, validated; a value that is no longer valid (the file was edited,
        or written by another version of kdtui) is an error that names the file."""
        from kdtui.config import build_config

        try:
            return build_config(self.config_dict())
        except KdtuiError as e:
            raise KdtuiError(f"{e} (in {self.config_file})") from None

    def events(self) -> Iterator[Event]:
        """Its complete, known events, in order (none before the log exists)."""
        if self.events_file.is_file():
            yield from read_events(self.events_file)

    def command(self) -> str | None:
        """The command that made the run (`teacher`, `prune`, ...): its first run_started
        record's, else the one config.toml's header names (a run stopped before training
        began), None before either exists. Notes about the data can come before that record,
        so the first line is not enough; any record with a string `command` counts, so a run
        written by another version of kdtui still tells its command."""
        started = self._first_started()
        if started is not None:
            command = started.get("command")
            return command if isinstance(command, str) else None
        try:
            with open(self.config_file, encoding="utf-8", errors="replace") as f:
                header = f.readline()
        except OSError:
            return None
        # "# kdtui prune: resolved configuration of run NAME", as `execute` writes it.
        words = header.removeprefix("# kdtui ").split(":")[0].split()
        return words[0] if header.startswith("# kdtui ") and len(words) == 1 else None

    def profile(self) -> str:
        """The profile the run was started with, as its first run_started record names it."""
        profile = (self._first_started() or {}).get("profile")
        return profile if isinstance(profile, str) else ""

    def _first_started(self) -> dict[str, Any] | None:
        """The first run_started record, as written; None before there is one."""
        try:
            with open(self.events_file, encoding="utf-8", errors="replace") as f:
                for line in f:
                    record = parse_record(line)
                    if record is not None and record["type"] == RunStarted.type:
                        return record
        except OSError:
            return None
        return None

    def finished(self) -> bool:
        """Whether the run ended successfully: metrics.json is written as it finishes."""
        return self.metrics_file.is_file()

    def metrics(self) -> dict[str, Any]:
        """The final summary; {} until the run has finished (or if it cannot be read)."""
        try:
            metrics = json.loads(self.metrics_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return metrics if isinstance(metrics, dict) else {}

    def predictions(self) -> dict[str, list[Any]]:
        """The best model's test predictions as test_predictions.json holds them: `domains`,
        `labels` and `predictions`, one entry per test example in split order; {} before the
        run has written them (or if they cannot be read)."""
        try:
            found = json.loads(self.predictions_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def correct(self) -> str:
        """The best model's test predictions as a string of '1' (right) and '0' (wrong), one
        character per test example in split order ('' before the run has written them): what
        the benchmarks' paired intervals compare."""
        found = self.predictions()
        if not found:
            return ""
        pairs = zip(found["predictions"], found["labels"], strict=True)
        return "".join("1" if p == y else "0" for p, y in pairs)

    def correct_by_domain(self) -> dict[str, str]:
        """correct() split by domain: {domain: '1'/'0' per test example of that domain, in
        split order}, the domains in the order their first example comes ({} before the run
        has written its predictions)."""
        found = self.predictions()
        if not found:
            return {}
        result: dict[str, str] = {}
        triples = zip(found["domains"], found["predictions"], found["labels"], strict=True)
        for domain, p, y in triples:
            result[domain] = result.get(domain, "") + ("1" if p == y else "0")
        return result

    def status(self) -> RunStatus:
        """running: a live process writes it; finished: it completed; failed: it stopped on an
        error; stopped: it was interrupted or killed (`--resume` continues it)."""
        if lock_holder(self.path) is not None:
            return "running"
        if self.finished():
            return "finished"
        status: RunStatus = "stopped"  # no outcome recorded: killed (SIGKILL, power cut)
        for event in self.events():
            if isinstance(event, RunStarted):
                status = "stopped"  # resumed after an earlier failure
            elif isinstance(event, RunFailed):
                status = "stopped" if event.kind == "interrupted" else "failed"
        return status

    def active_seconds(self) -> float:
        """Seconds the run has worked, by its events: each attempt from its run_started to the
        last event it wrote, so the time a killed run lay idle before its resume is left out."""
        total, start, last = 0.0, None, None
        for event in self.events():
            if isinstance(event, RunStarted):
                if start is not None and last is not None:
                    total += last - start
                start = event.time
            last = event.time
        if start is not None and last is not None:
            total += last - start
        return total

    def saved_model(self) -> Path | None:
        """RUN/model once the run has saved it (a Hugging Face folder), else None."""
        return self.model if (self.model / MODEL_CONFIG).is_file() else None

    def students(self) -> list[Path]:
        """The student folders of a `kdtui distill --domain all` run (RUN/domains/D, each with
        its model), in domain order; [] for any other run."""
        if self.model.exists():
            return []
        found = self.path.glob(f"{DOMAINS_DIR}/*/{MODEL_DIR}/{MODEL_CONFIG}")
        return sorted(config.parent.parent for config in found)


def read_run(path: Path) -> RunInfo:
    """The run at PATH, for reading; a KdtuiError says why PATH is not one."""
    if not path.is_dir():
        raise KdtuiError(f"{path}: no such run directory")
    run = RunInfo(path)
    if not run.config_file.is_file():
        raise KdtuiError(f"{path}: not a kdtui run (no {CONFIG_FILE})")
    return run


def find_run(path: Path) -> RunInfo | None:
    """The run at PATH, or None when PATH is anything else (a model folder, a hub name)."""
    try:
        return read_run(path)
    except KdtuiError:
        return None


def run_of_model(folder: Path) -> RunInfo | None:
    """The run whose final model FOLDER is (RUN/model), or None for any other model folder."""
    return find_run(folder.parent) if folder.name == MODEL_DIR else None


def run_folders(root: Path) -> list[Path]:
    """The runs in a folder, sorted: every subfolder with an event log (one that is starting
    has no config.toml yet)."""
    return sorted(events.parent for events in root.glob(f"*/{EVENTS_FILE}"))


def latest_finished_run(root: Path, command: str) -> Path | None:
    """The most recently finished run of `command` under `root` (by metrics.json time)."""
    runs = [RunInfo(path) for path in run_folders(root)]
    candidates = [
        (run.metrics_file.stat().st_mtime, run.path)
        for run in runs
        if run.finished() and run.command() == command
    ]
    return max(candidates)[1] if candidates else None


# ---------------------------------------------------------------------------------------------
# Writing a run

Listener = Callable[[Event], None]


def default_run_name(command: str) -> str:
    return f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_new_run_path(path: Path, *, force: bool) -> None:
    """Refuse to write a new run where something is already: a run is replaced only with
    `--force` (`--resume` is the other way), a folder kdtui did not write never, and a run that
    a live process is writing never."""
    if path.exists() and not path.is_dir():
        raise KdtuiError(f"output path {path} exists and is not a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise KdtuiError(f"cannot create {path}: {parent} is a file, not a directory")
            break
    if not path.is_dir() or all(p.name == LOCK_FILE for p in path.iterdir()):
        return  # a new folder, or one whose run was killed as it started
    holder = lock_holder(path)
    if holder is not None:
        raise KdtuiError(holder.in_use(path))
    if not is_run_dir(path):
        raise KdtuiError(
            f"{path} is not a kdtui run (it holds {describe_contents(path)}); "
            + (
                "--force replaces only kdtui runs; nothing was touched"
                if force
                else "choose another --name or --output-dir"
            )
        )
    if not force:
        raise KdtuiError(
            f"{path} already holds a run; use --resume {path} to continue it, "
            "--force to replace it, or choose another --name"
        )


def is_run_dir(path: Path) -> bool:
    """Whether kdtui wrote this folder: a config.toml with kdtui's header and an events.jsonl
    that is empty (killed before the first event) or starts with an event record. (The first
    event is not always run_started: notes about the data come before it.)"""
    try:
        layout = RunLayout(path)
        with open(layout.config_file, encoding="utf-8", errors="replace") as f:
            if not f.readline().startswith("# kdtui "):
                return False
        with open(layout.events_file, "rb") as f:
            first = f.readline(1 << 20)
    except OSError:
        return False
    if not first.strip():
        return True
    try:
        line = first.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return parse_record(line) is not None  # the readers' own test of an event record


def describe_contents(path: Path, shown: int = 4) -> str:
    """A folder's first entries, as a user would recognise them: `.bashrc, docs/, ...`."""
    try:
        entries = sorted(path.iterdir(), key=lambda p: p.name)
    except OSError as e:
        return f"entries that cannot be listed: {e.strerror}"
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:shown]]
    more = len(entries) - shown
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


# ---------------------------------------------------------------------------------------------
# One writer per run directory


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str

    def in_use(self, run: Path) -> str:
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return (
            f"{run} is in use: process {self.pid}{where} is writing to it; wait for it to end, "
            f"or stop it with `kill {self.pid}` (it checkpoints and stops)"
        )

    def alive(self) -> bool:
        """Whether the holder still runs (one on another host is assumed to: it cannot be
        asked)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's process
        return True


class RunLock:
    """An exclusive lock on a run directory, held for as long as one process writes the run.

    The lock is an flock on RUN/.lock, which also records the holder's process id and host for
    the message a second process gets. The kernel drops an flock when its process dies, however
    it dies (SIGKILL, a power cut on a network file system's client), so a lock file left
    behind by a killed run is simply taken over. On a file system without flock the recorded
    process id decides: a lock from a process that no longer runs on this host is stale."""

    def __init__(self, file: Path, fd: int) -> None:
        self.file = file
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, run: Path) -> RunLock:
        file = run / LOCK_FILE
        while True:
            try:
                fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise KdtuiError(f"cannot write the run directory {run}: {e.strerror}") from None
            try:
                if not _flock(fd):
                    holder = _read_holder(file)
                    raise KdtuiError(
                        holder.in_use(run)
                        if holder is not None
                        else f"{run} is in use by another process (it holds {file})"
                    )
            except BaseException:
                os.close(fd)
                raise
            # The holder may have released (and removed) the file between our open and our
            # flock: then we hold a lock on a file no one else can see; open the new one.
            try:
                current = os.stat(file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        return cls(file, fd)

    def release(self, file: Path | None = None) -> None:
        """Remove the lock file (at `file` if the run was moved) and drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # gone already, with its run directory
            os.unlink(file or self.file)
        os.close(self._fd)
        self._fd = None


def lock_holder(run: Path) -> LockHolder | None:
    """Who is writing `run` now, or None if no live process is."""
    file = run / LOCK_FILE
    try:
        fd = os.open(file, os.O_RDWR)
    except OSError:
        return None
    try:
        if _flock(fd):
            return None  # nobody holds it; ours goes when the descriptor closes
        return _read_holder(file) or LockHolder(0, "?")  # locked before it wrote its id
    finally:
        os.close(fd)


def _flock(fd: int) -> bool:
    """Take an exclusive flock without waiting; False if another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    # No flock on this file system: a recorded holder that still runs keeps the lock.
    holder = _read_holder_fd(fd)
    return holder is None or not holder.alive()


def _read_holder(file: Path) -> LockHolder | None:
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_holder_fd(fd)
    finally:
        os.close(fd)


def _read_holder_fd(fd: int) -> LockHolder | None:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"null")
        return LockHolder(int(record["pid"]), str(record["host"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


class RunDir(RunLayout):
    """The writer of a run directory."""

    def __init__(self, path: Path, *, is_main: bool = True) -> None:
        super().__init__(path)
        self.is_main = is_main
        self.listeners: list[Listener] = []
        self.stopwatch = Stopwatch()  # this run's fixed costs beside its training time
        self._sink: EventSink | None = None
        self._lock: RunLock | None = None
        self._held: list[Event] | None = None  # events not yet written (`hold_events`)

    @property
    def _replaced(self) -> Path:
        return self.path.with_name(f".{self.path.name}.replaced")

    def open(self, *, fresh: bool) -> None:
        """Lock the directory for this process, then create it (or reopen it, on resume) and
        its event log. Nothing is written before the lock is held. A run that `--force`
        replaces is moved aside, not deleted, until training starts (`keep`): a mistake found
        while loading data or models gives it back (`discard`)."""
        if not self.is_main:
            return
        try:
            if fresh and self.path.is_dir() and any(self.path.iterdir()):
                # Only reached with --force on a kdtui run (checked before); its own writer,
                # if it has one, keeps it.
                replaced = RunLock.acquire(self.path)
                try:
                    shutil.rmtree(self._replaced, ignore_errors=True)
                    self.path.rename(self._replaced)
                finally:
                    moved = not self.path.exists()
                    replaced.release(self._replaced / LOCK_FILE if moved else None)
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = RunLock.acquire(self.path)
            self._sink = EventSink(self.events_file)
        except OSError as e:
            self.close()
            raise KdtuiError(f"cannot write the run directory {self.path}: {e.strerror}") from None

    def write_text(self, name: str, text: str) -> None:
        if self.is_main:
            from kdtui.checkpoint import write_text_atomic  # torch: keep it off the dashboard path

            write_text_atomic(self.path / name, text)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if self.is_main:
            from kdtui.checkpoint import write_json_atomic  # torch: keep it off the dashboard path

            write_json_atomic(self.metrics_file, metrics)

    def log(self, event: Event) -> None:
        if not self.is_main:
            return
        if self._held is not None:
            self._held.append(event)
        elif self._sink is not None:
            self._sink.write(event)
        for listener in self.listeners:
            listener(event)

    def hold_events(self) -> None:
        """Keep the events logged from now on out of the file until `release_events`; closing
        the run first drops them. A process that did not create the run writes into it only
        once it is sure to continue it."""
        if self._held is None:
            self._held = []

    def release_events(self) -> None:
        """Write the held events, in order, and stop holding."""
        held, self._held = self._held, None
        for event in held or []:
            if self._sink is not None:
                self._sink.write(event)

    def keep(self) -> None:
        """Training starts: this run is the one to keep, and a run it replaces goes."""
        if self.is_main:
            shutil.rmtree(self._replaced, ignore_errors=True)

    def discard(self) -> None:
        """Remove a run directory this process created and nothing else depends on, and put
        back the run it was to replace, if any."""
        self.close()
        if self.is_main:
            shutil.rmtree(self.path, ignore_errors=True)
            if self._replaced.exists():
                self._replaced.rename(self.path)

    def close(self) -> None:
        """Close the event log and release the directory: on every way out of a run."""
        self._held = None
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
