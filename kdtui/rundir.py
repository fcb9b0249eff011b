"""The run directory: the unit a user keeps.

    RUN/config.toml     the fully resolved config (a profile: `--profile RUN/config.toml` reruns it)
    RUN/events.jsonl    append-only event log (the dashboard's only input)
    RUN/checkpoints/    atomic checkpoints for --resume
    RUN/best/           the best weights so far (by dev accuracy)
    RUN/model/          the final model in Hugging Face layout
    RUN/metrics.json    the final summary
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdtui.errors import KdtuiError
from kdtui.events import Event
from kdtui.runlog import EVENTS_FILE, EventSink

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
        with open(path / "config.toml", encoding="utf-8", errors="replace") as f:
            if not f.readline().startswith("# kdtui "):
                return False
        with open(path / EVENTS_FILE, "rb") as f:
            first = f.readline(1 << 20)
    except OSError:
        return False
    if not first.strip():
        return True
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and isinstance(record.get("type"), str)


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

LOCK_FILE = ".lock"


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


def run_command(run: Path) -> str | None:
    """The command that made a run (`teacher`, `prune`, ...): its first run_started event. Notes
    about the data can come before it, so the first line is not enough."""
    import json

    try:
        with open(run / EVENTS_FILE, encoding="utf-8") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("type") == "run_started":
                    command = event.get("command")
                    return command if isinstance(command, str) else None
    except OSError:
        return None
    return None


def is_finished(run: Path) -> bool:
    """Whether a run ended successfully: its metrics.json is written as it finishes."""
    return (run / "metrics.json").is_file()


def latest_finished_run(root: Path, command: str) -> Path | None:
    """The most recently finished run of `command` under `root` (by metrics.json time)."""
    candidates = [
        (metrics.stat().st_mtime, metrics.parent)
        for metrics in root.glob("*/metrics.json")
        if run_command(metrics.parent) == command
    ]
    return max(candidates)[1] if candidates else None


SPARSE_DIR = "model-sparse"  # `kdtui prune`'s compressed copy of RUN/model


class RunDir:
    def __init__(self, path: Path, *, is_main: bool = True) -> None:
        self.path = path
        self.is_main = is_main
        self.listeners: list[Listener] = []
        self._sink: EventSink | None = None
        self._lock: RunLock | None = None

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def events_file(self) -> Path:
        return self.path / EVENTS_FILE

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
            tmp = self.path / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(self.path / name)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if self.is_main:
            from kdtui.checkpoint import write_json_atomic  # torch: keep it off the dashboard path

            write_json_atomic(self.path / "metrics.json", metrics)

    def log(self, event: Event) -> None:
        if not self.is_main:
            return
        if self._sink is not None:
            self._sink.write(event)
        for listener in self.listeners:
            listener(event)

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
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
