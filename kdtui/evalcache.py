"""`kdtui evaluate`'s cache: one model's results under one set of evaluation settings, kept so
that evaluating a folder of runs again evaluates only the models that are new or changed.

Where: `.kdtui-eval-cache/` in the folder the model belongs to, its *home*: the run directory
for a run, its model folder and its students (RUN/.kdtui-eval-cache/), the export folder for an
ONNX model, the folder itself for any other model folder. A result goes where its model goes:
it is moved and deleted with it (a run replaced with `--force` takes its results along), no
folder the user did not name is written, and the dashboard finds a run's results in the run.
One JSON file per model and settings, `NAME.SETTINGS.json` (NAME: the model's path inside its
home, SETTINGS: a digest of the settings), written atomically.

What a result depends on, and so what is compared before one is used:
- the settings (`settings_of`): the data config and the size and time of the data files, the
  split, the latency grid and repeats, sparse kernels, the logits' batch size, the KD
  temperature of the source statistics, the thread count, the host (latency is this machine's)
  and kdtui's and torch's versions. They name the file: other data, another split or grid is
  another file, so results of two data sets never mix.
- the model's files (path, size, mtime_ns of each: `kdtui.recipes.evaluate.model_files`),
  stored in the file: a model whose files changed is evaluated again and its file replaced.

Reading needs only the standard library (the dashboard reads results without torch); writing
goes through `kdtui.checkpoint.write_text_atomic`, imported when a result is written."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtui import __version__
from kdtui.rundir import DOMAINS_DIR, MODEL_DIR, find_run

if TYPE_CHECKING:
    from kdtui.config import Config

CACHE_DIR = ".kdtui-eval-cache"
FORMAT = 1  # bumped when a result's fields change meaning: older files are then not used
SELF = "."  # the name of a model that is its home itself (a run directory, a model folder)

FileStat = list[Any]  # [path (relative to the home where it is inside), size, mtime_ns]


def home_of(model: str) -> tuple[Path, str] | None:
    """The folder whose CACHE_DIR holds MODEL's results and MODEL's name in it (its path inside
    that folder, SELF for the folder itself); None for a model that is not a local path (a hub
    name, `minilm`): nothing of the user's to keep results beside."""
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".onnx":
        return path.parent, path.name
    if not path.is_dir():
        return None
    # RUN/model and RUN/domains/D(/model) belong to RUN (kdtui.resolver.run_holding's rule).
    folder = path.parent if path.name == MODEL_DIR else path
    if folder.parent.name == DOMAINS_DIR:
        folder = folder.parent.parent
    run = find_run(path) or find_run(folder)
    if run is None:
        return path, SELF
    return run.path, path.relative_to(run.path).as_posix()  # "." (SELF) for RUN itself


def cache_file(home: Path, name: str, settings: dict[str, Any]) -> Path:
    slug = "_" if name == SELF else name.replace("/", "+")
    return home / CACHE_DIR / f"{slug}.{digest(settings)}.json"


def digest(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def settings_of(config: Config, *, threads: int, torch_version: str) -> dict[str, Any]:
    """Everything besides the model that changes `kdtui evaluate`'s numbers for a model."""
    sections = config.to_dict()
    return {
        "format": FORMAT,
        "kdtui": __version__,
        "torch": torch_version,
        "host": socket.gethostname(),
        "threads": threads,
        "data": sections["data"],
        "data_files": stat_files(data_files(config.data.source), home=None),
        "evaluate": sections["evaluate"],
        "eval_batch_size": config.train.eval_batch_size,
        "kd_temperature": config.distill.kd_temperature,
        "trust_remote_code": config.model.trust_remote_code,
    }


def data_files(source: str) -> list[Path]:
    """The local files of a data source (a file, or the files of a folder); none for the
    synthetic data, which its settings alone determine, or a hub name."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    return []


def stat_files(files: Iterable[Path], home: Path | None) -> list[FileStat]:
    """[path, size, mtime_ns] of each file, sorted: paths inside HOME relative to it (a moved
    runs folder keeps its results; a copy gets new times and is evaluated again), others
    absolute."""
    found = []
    for file in files:
        stat = file.stat()
        found.append([_shown(file, home), stat.st_size, stat.st_mtime_ns])
    return sorted(found)


def _shown(file: Path, home: Path | None) -> str:
    resolved = file.resolve()
    if home is not None:
        try:
            return resolved.relative_to(home.resolve()).as_posix()
        except ValueError:
            pass
    return str(resolved)


def load(file: Path, settings: dict[str, Any], files: list[FileStat]) -> dict[str, Any] | None:
    """The cached entry in FILE when it was written under SETTINGS for these very FILES; None
    when there is none, it cannot be read, or anything differs."""
    entry = read_entry(file)
    if entry is None or entry.get("settings") != settings or entry.get("files") != files:
        return None
    return entry


def store(
    file: Path,
    name: str,
    settings: dict[str, Any],
    files: list[FileStat],
    context: dict[str, Any],
    result: dict[str, Any],
) -> None:
    """Write one model's entry (atomically: a killed write leaves the previous entry or none).
    An OSError (a read-only model folder) is the caller's to report."""
    from kdtui.checkpoint import write_text_atomic  # torch: keep it off the dashboard's path

    entry = make_entry(name, settings, files, context, result)
    file.parent.mkdir(exist_ok=True)
    write_text_atomic(file, json.dumps(entry, indent=1, sort_keys=True) + "\n")


def make_entry(
    name: str,
    settings: dict[str, Any],
    files: list[FileStat],
    context: dict[str, Any],
    result: dict[str, Any],
    written_at: float | None = None,
) -> dict[str, Any]:
    """A cache file's content: the model's NAME in its home, what the result depends on
    (SETTINGS, FILES), the split it was measured on (CONTEXT: split, data, domains, examples)
    and the RESULT, one model's entry of the report."""
    return {
        "format": FORMAT,
        "model": name,
        "settings": settings,
        "digest": digest(settings),
        "files": files,
        "context": context,
        "written_at": time.time() if written_at is None else written_at,
        "result": result,
    }


def read_entry(file: Path) -> dict[str, Any] | None:
    """An entry as written, None when it cannot be read, is not one, or has another format."""
    try:
        entry = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return None
    ok = isinstance(entry, dict) and entry.get("format") == FORMAT
    if not ok or not isinstance(entry.get("result"), dict):
        return None
    return entry


# -- reading a run's results (the dashboard) -----------------------------------------------------


@dataclass(frozen=True)
class Cached:
    """One cached result found in a run: the model it scored and the settings it was under."""

    run: Path
    model: Path  # the model's path now (its home and its name), whatever it was called then
    digest: str
    settings: dict[str, Any]
    context: dict[str, Any]
    written_at: float
    result: dict[str, Any]


def cached_in(run: Path) -> list[Cached]:
    """Every current result kept in a run: the run's own (its model, its students) and those of
    folders directly inside it (an export, RUN/onnx). A result whose model files changed since
    (another size or time) is left out: `kdtui evaluate` would evaluate it again."""
    files = sorted([*run.glob(f"{CACHE_DIR}/*.json"), *run.glob(f"*/{CACHE_DIR}/*.json")])
    found = []
    for file in files:
        entry = read_entry(file)
        if entry is None:
            continue
        home = file.parent.parent
        if not _unchanged(entry.get("files"), home):
            continue
        name = str(entry.get("model", SELF))
        found.append(
            Cached(
                run=run,
                model=home if name == SELF else home / name,
                digest=str(entry.get("digest", "")),
                settings=entry.get("settings") or {},
                context=entry.get("context") or {},
                written_at=float(entry.get("written_at") or 0.0),
                result=entry["result"],
            )
        )
    return found


def _unchanged(files: Any, home: Path) -> bool:
    if not isinstance(files, list):
        return False
    for item in files:
        try:
            shown, size, mtime_ns = item
            stat = os.stat(home / shown)  # an absolute `shown` stays absolute
        except (OSError, TypeError, ValueError):
            return False
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
            return False
    return True
