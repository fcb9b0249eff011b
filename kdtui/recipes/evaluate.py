"""`kdtui evaluate`: accuracy per domain, size and speed of one or more models, side by side.

No run directory is created and nothing a run holds is changed: the one thing written is each
model's cached result, in .kdtui-eval-cache/ beside it. The report is a plain dict (the CLI
renders it as a table or writes it as JSON).

A model is a kdtui run directory, a model folder, or an ONNX export (`kdtui export`: each of its
.onnx files is scored under ONNX Runtime as a model of its own). An unstructured model is also
timed with sparse kernels (`evaluate.sparse_kernels`, kdtui/sparse_kernels.py): its latency
both ways, which matrices went sparse, and how far the logits moved. A PyTorch model also gets
its statistics as a source of distillation on the split, and a `kdtui distill` student its
agreement with the teacher its run records (`as_source`).

A folder of runs (`kdtui evaluate runs/`) stands for the runs and exports in it
(`expand_folders`). Each model's results are cached beside it (kdtui/evalcache.py): a model
whose files and settings are unchanged is not evaluated again. Every report marks the Pareto
frontiers of its models (kdtui/frontier.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdtui import evalcache
from kdtui.config import Config
from kdtui.data import MultiDomainData, encode, load_data
from kdtui.engine.evaluate import accuracy_of_predictions, predict_logits
from kdtui.errors import KdtuiError
from kdtui.frontier import mark_report
from kdtui.layout import encoder_linears
from kdtui.models import (
    LABELS_KEY,
    check_labels,
    check_max_length,
    check_model_labels,
    load_model_tokenizer,
    resolve_model_path,
)
from kdtui.rundir import RunInfo
from kdtui.timing import median_seconds

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")

SPARSITY_NOTE = (
    "unstructured sparsity makes the model smaller on disk but not faster: dense PyTorch "
    "kernels multiply the zeros too"
)
SPARSE_KERNELS_NOTE = (
    "sparse kernels (CSR products, see the line above) skip the zeros: "
    "see the 'sparse kernels' rows"
)
ONNX_SPARSITY_NOTE = "ONNX Runtime's kernels multiply the zeros of an unstructured model too"
STRUCTURED_NOTE = (
    "pruned heads and FFN neurons are physically removed: fewer parameters, smaller and faster"
)


def evaluate_models(
    paths: list[str], config: Config, data_from: str = "", *, use_cache: bool = True
) -> dict[str, Any]:
    """DATA_FROM says where the data config came from when the user did not give it (the first
    model's run), for a refusal to name. A model whose result is cached for these settings and
    these very files (kdtui/evalcache.py) is taken from the cache unless USE_CACHE is off; every
    model evaluated has its result stored, so `--no-cache` refreshes the cache. The data is
    loaded only when a model has to be evaluated: a report made of cached results alone takes
    the split's domains and size from them (the settings they were cached under include the
    data config and the data files)."""
    if config.run.threads:  # latency is reported on this many threads (PyTorch and ORT alike)
        torch.set_num_threads(config.run.threads)
    threads = torch.get_num_threads()
    settings = evalcache.settings_of(config, threads=threads, torch_version=str(torch.__version__))
    data: MultiDomainData | None = None
    context: dict[str, Any] | None = None  # the split's domains and size, for the report
    models = []
    for path in expand_runs(paths):
        home = evalcache.home_of(path)
        file, files = None, []
        if home is not None:
            files = evalcache.stat_files(model_files(path), home[0])
            file = evalcache.cache_file(home[0], home[1], settings)
        entry = evalcache.load(file, settings, files) if use_cache and file is not None else None
        if entry is not None:
            context = context or entry["context"]
            models.append({**entry["result"], "model": path, "cached": True})
            continue
        if data is None:
            data = load_data(config.data)
            context = split_context(config, data)
        result = evaluate_labelled(path, config, data, data_from)
        if file is not None and home is not None:
            try:
                evalcache.store(file, home[1], settings, files, split_context(config, data), result)
            except OSError as e:
                result["notes"].append(
                    f"its result could not be cached in {file.parent} ({e.strerror}): it is "
                    "evaluated again next time"
                )
        models.append({**result, "cached": False})
    if context is None:  # no model at all (cannot happen from the CLI, which needs one)
        data = load_data(config.data)
        context = split_context(config, data)
    report: dict[str, Any] = {
        "split": config.evaluate.split,
        "data": config.data.source,
        "domains": context["domains"],
        "examples": context["examples"],
        "threads": threads,
        "models": models,
        "cached": sum(1 for m in models if m["cached"]),
    }
    mark_report(report)
    return report


def split_context(config: Config, data: MultiDomainData) -> dict[str, Any]:
    """What the report says about the evaluated split (kept with each cached result)."""
    return {
        "split": config.evaluate.split,
        "data": config.data.source,
        "domains": data.domain_names,
        "examples": len(data.split(config.evaluate.split)),
    }


def evaluate_labelled(
    path: str, config: Config, data: MultiDomainData, data_from: str
) -> dict[str, Any]:
    """evaluate_one, with a model trained for other labels than the data's refused in words
    that say where the data came from."""
    try:
        return evaluate_one(path, config, data)
    except LabelMismatch as e:
        source = f"the data {data_from}" if data_from else f"data.source = {config.data.source}"
        raise KdtuiError(
            f"{e}; the {config.evaluate.split} split is {source}: score {path} on its own "
            f"data in a command of its own (kdtui evaluate {path}), or give --data with "
            "data every model was trained for"
        ) from None


class LabelMismatch(KdtuiError):
    """A model that does not predict the labels of the data it is asked to score."""


def expand_folders(paths: list[str]) -> tuple[list[str], list[str]]:
    """The models a command line names, and notes on what a folder of runs left out.

    A path that is itself something to evaluate (a run directory, finished or not, a model
    folder, an export folder, a file, a name that is no folder) stays as it is. Any other
    folder (`runs/`) stands for what is directly inside it, in name order: each run directory
    that has a model, followed by the export folders directly inside that run (RUN/onnx), and
    each export folder. Hidden entries are skipped (a run being replaced by `--force` is moved
    to .NAME.replaced). A run without a model yet (running, failed, stopped) is left out with a
    note, and a folder that holds nothing to evaluate is an error."""
    from kdtui.exportdir import is_export_folder
    from kdtui.rundir import describe_contents, is_run_dir

    expanded: list[str] = []
    notes: list[str] = []
    for path in paths:
        folder = Path(path).expanduser()
        if not folder.is_dir() or _is_one_model(folder):
            expanded.append(path)
            continue
        found: list[str] = []
        left_out: list[str] = []
        for child in sorted(folder.iterdir(), key=lambda p: p.name):
            if child.name.startswith(".") or not child.is_dir():
                continue
            shown = str(Path(path) / child.name)
            if is_run_dir(child):
                run = RunInfo(child)
                if run.saved_model() is None and not run.students():
                    left_out.append(f"{shown} ({run.status()})")
                    continue
                found.append(shown)
                found += [
                    str(Path(shown) / sub.name)
                    for sub in sorted(child.iterdir(), key=lambda p: p.name)
                    if sub.is_dir() and is_export_folder(sub)
                ]
            elif is_export_folder(child):
                found.append(shown)
        if left_out:
            notes.append(f"{path}: left out the runs without a model: {', '.join(left_out)}")
        if not found:
            if left_out:
                raise KdtuiError(
                    f"{path} holds no run with a model to evaluate (runs without one: "
                    f"{', '.join(left_out)})"
                )
            contents = describe_contents(folder) or "nothing"
            raise KdtuiError(
                f"{path} is not a run, a model folder or an export folder, and holds no run "
                f"directory or export folder (it holds {contents}); kdtui evaluate takes run "
                "directories (runs/teacher-...), model folders, export folders (kdtui export), "
                "or a folder of them (runs/)"
            )
        expanded += found
    return expanded, notes


def _is_one_model(folder: Path) -> bool:
    """A folder `kdtui evaluate` scores as given: a run directory (RUN/config.toml or
    RUN/events.jsonl, whatever its state: evaluating it says what is missing), a model folder,
    an export folder."""
    from kdtui.exportdir import is_export_folder
    from kdtui.rundir import MODEL_CONFIG

    run = RunInfo(folder)
    return (
        run.config_file.is_file()
        or run.events_file.is_file()
        or (folder / MODEL_CONFIG).is_file()
        or is_export_folder(folder)
    )


def model_files(path: str) -> list[Path]:
    """The files a model's results depend on, whose sizes and times kdtui/evalcache.py compares:
    for an ONNX model its file and the other files of its export folder (config, tokenizer);
    else every file of the model folder (weights, config, tokenizer), the compressed copy whose
    size is reported, the config.toml of the run it comes from (its data, its teacher) and the
    files of the teacher its agreement is measured against."""
    from kdtui.resolver import run_holding

    given = Path(path).expanduser()
    if given.suffix == ".onnx":
        others = [f for f in given.parent.iterdir() if f.is_file() and f.suffix != ".onnx"]
        return sorted({given, *others})
    folder = Path(resolve_model_path(path))
    files = [f for f in folder.iterdir() if f.is_file()]
    files += weights_files(path, folder)
    run = run_holding(given)
    if run is not None and run.config_file.is_file():
        files.append(run.config_file)
    teacher = recorded_teacher(path)
    if teacher is not None:
        try:
            teacher_folder = Path(resolve_model_path(teacher))
        except KdtuiError:  # the report's note says the agreement could not be measured
            teacher_folder = None
        if teacher_folder is not None and teacher_folder.is_dir():
            files += [f for f in teacher_folder.iterdir() if f.is_file()]
    return sorted(set(files))


def expand_runs(paths: list[str]) -> list[str]:
    """A `kdtui distill --domain all` run holds one student per domain (RUN/domains/D): it
    stands for all of them. An export folder stands for each of its .onnx models."""
    from kdtui.exportdir import is_export_folder, onnx_files

    expanded = []
    for path in paths:
        folder = Path(path).expanduser()
        students = RunInfo(folder).students()
        if students:
            expanded += [str(s) for s in students]
        elif is_export_folder(folder):
            expanded += [str(Path(path) / f.name) for f in onnx_files(folder)]
        else:
            expanded.append(path)
    return expanded


def evaluate_one(path: str, config: Config, data: MultiDomainData) -> dict[str, Any]:
    from kdtui.models import load_any

    if path.endswith(".onnx"):
        return evaluate_onnx(path, config, data)
    folder = Path(resolve_model_path(path))
    model = load_any(folder)
    model.eval()
    try:
        check_model_labels(path, model, data.label_names)
    except KdtuiError as e:
        raise LabelMismatch(str(e)) from None
    check_max_length(config.data.max_length, path, model.config.to_dict())
    tokenizer = load_model_tokenizer(folder, trust_remote_code=config.model.trust_remote_code)
    split = data.split(config.evaluate.split)
    encoded = encode(split, tokenizer, config.data.max_length)
    pad_id = tokenizer.pad_token_id or 0
    # predictions_in_order's computation (one process), with the logits kept: sparse kernels
    # are compared with them.
    logits = split_logits(model, encoded, config, pad_id)
    accuracy = accuracy_of_predictions(logits.argmax(-1).tolist(), encoded, data.domain_names)
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    nonzero = sum(int(torch.count_nonzero(p)) for p in params)
    vocab_size = model.config.vocab_size
    result: dict[str, Any] = {
        "model": path,
        "runtime": "pytorch",
        "accuracy": accuracy,
        "parameters": total,
        "nonzero_parameters": nonzero,
        "latency": latency_grid(torch_forward(model), config, vocab_size=vocab_size),
        "notes": [],
    }
    files = weights_files(path, folder)
    result["size_bytes"] = sum(f.stat().st_size for f in files)
    result["size_files"] = [_shown(f, path) for f in files]
    result["encoder_sparsity"] = encoder_sparsity(model)
    if nonzero < 0.9 * total or (result["encoder_sparsity"] or 0) > 0.1:
        result["notes"].append(SPARSITY_NOTE)
    if getattr(model.config, "kdtui_structure", None):
        result["notes"].append(STRUCTURED_NOTE)
    source = as_source(path, model, encoded, config, pad_id, logits, data)
    result["notes"] += source.pop("notes", [])
    result.update(source)
    sparse = with_sparse_kernels(model, config, encoded, pad_id, logits, data.domain_names)
    if sparse is not None:
        result["sparse_kernels"] = sparse
        if sparse["matrices"]:
            result["notes"].append(SPARSE_KERNELS_NOTE)
    return result


def as_source(
    path: str,
    model: Any,
    encoded: Any,
    config: Config,
    pad_id: int,
    logits: torch.Tensor,
    data: MultiDomainData,
) -> dict[str, Any]:
    """The model's statistics as a source of distillation on the split ("source": margin,
    entropy at distill.kd_temperature, each hidden layer's variance and mean pairwise cosine;
    kdtui/methods/source_stats.py), and for a student whose run records its teacher (a
    `kdtui distill` run) its agreement with that teacher per domain ("agreement", "teacher"; a
    teacher that cannot be scored is a note instead)."""
    from kdtui.methods.source_stats import (
        agreement_by_domain,
        logits_and_sentence_layers,
        source_statistics,
    )

    own_logits, layers = logits_and_sentence_layers(
        model,
        encoded,
        batch_size=config.train.eval_batch_size,
        pad_id=pad_id,
        device=torch.device("cpu"),
    )
    result: dict[str, Any] = {}
    if len(own_logits):
        result["source"] = source_statistics(own_logits, layers, config.distill.kd_temperature)
    teacher = recorded_teacher(path)
    if teacher is None:
        return result
    try:
        teacher_predictions = predictions_of(teacher, config, data).argmax(-1).tolist()
    except KdtuiError as e:
        return {**result, "notes": [f"no agreement with the teacher {teacher}: {e}"]}
    predictions = logits.argmax(-1).tolist()
    result["teacher"] = teacher
    result["agreement"] = agreement_by_domain(
        predictions, teacher_predictions, encoded.domains, data.domain_names
    )
    return result


def recorded_teacher(path: str) -> str | None:
    """The teacher a `kdtui distill` run (or one of its students, or their model folder)
    records in its config.toml; None for anything else."""
    from kdtui.resolver import run_holding

    run = run_holding(Path(path).expanduser())
    if run is None or run.command() != "distill":
        return None
    teacher = run.config_dict().get("distill", {}).get("teacher")
    return teacher if isinstance(teacher, str) and teacher else None


def predictions_of(model_path: str, config: Config, data: MultiDomainData) -> torch.Tensor:
    """The logits of the model at MODEL_PATH on the evaluated split, encoded by its own
    tokenizer."""
    from kdtui.models import load_any

    folder = Path(resolve_model_path(model_path))
    model = load_any(folder)
    model.eval()
    tokenizer = load_model_tokenizer(folder, trust_remote_code=config.model.trust_remote_code)
    encoded = encode(data.split(config.evaluate.split), tokenizer, config.data.max_length)
    return split_logits(model, encoded, config, tokenizer.pad_token_id or 0)


def split_logits(model: Any, encoded: Any, config: Config, pad_id: int) -> torch.Tensor:
    return predict_logits(
        model,
        encoded,
        range(len(encoded)),
        batch_size=config.train.eval_batch_size,
        pad_id=pad_id,
        device=torch.device("cpu"),
    )


def with_sparse_kernels(
    model: Any,
    config: Config,
    encoded: Any,
    pad_id: int,
    dense_logits: torch.Tensor,
    domain_names: list[str],
) -> dict[str, Any] | None:
    """Swap in sparse kernels where they are faster and score the model again: None when no
    encoder matrix is sparse enough to try (a dense or heads-ffn model) or they are off."""
    from kdtui.sparse_kernels import MIN_SPARSITY, sparse_summary, use_sparse_kernels

    mode = config.evaluate.sparse_kernels
    sparsity = encoder_sparsity(model)
    if mode == "off" or sparsity is None or sparsity < MIN_SPARSITY:
        return None
    choices = use_sparse_kernels(model, mode)
    report: dict[str, Any] = {
        "mode": mode,
        "matrices": [c.name for c in choices if c.sparse],
        "of": len(choices),
        "summary": sparse_summary(choices),
        "choices": [
            {
                "name": c.name,
                "sparsity": c.sparsity,
                "sparse": c.sparse,
                "dense_ms": c.dense_ms,
                "sparse_ms": c.sparse_ms,
            }
            for c in choices
        ],
    }
    if not report["matrices"]:
        return report
    logits = split_logits(model, encoded, config, pad_id)
    report["max_logit_diff"] = float((logits - dense_logits).abs().max()) if len(logits) else 0.0
    report["accuracy"] = accuracy_of_predictions(logits.argmax(-1).tolist(), encoded, domain_names)
    report["latency"] = latency_grid(
        torch_forward(model), config, vocab_size=model.config.vocab_size
    )
    return report


def evaluate_onnx(path: str, config: Config, data: MultiDomainData) -> dict[str, Any]:
    """One .onnx model of an export folder, under ONNX Runtime on torch's thread count."""
    from kdtui.export import count_parameters, onnx_logits, session, session_forward
    from kdtui.models import load_model_tokenizer, read_config_json

    file = Path(path).expanduser()
    if not file.is_file():
        raise KdtuiError(f"model '{path}' does not exist")
    folder = file.parent
    model_config = read_config_json(folder)
    trained = model_config.get(LABELS_KEY)
    labels = trained or [
        model_config.get("id2label", {}).get(str(i), str(i))
        for i in range(len(model_config.get("id2label", {})))
    ]
    try:
        check_labels(path, labels, trained, data.label_names)
    except KdtuiError as e:
        raise LabelMismatch(str(e)) from None
    check_max_length(config.data.max_length, path, model_config)
    tokenizer = load_model_tokenizer(folder)
    sess = session(file, torch.get_num_threads())
    split = data.split(config.evaluate.split)
    encoded = encode(split, tokenizer, config.data.max_length)
    logits = onnx_logits(
        sess, encoded, batch_size=config.train.eval_batch_size, pad_id=tokenizer.pad_token_id or 0
    )
    total, nonzero = count_parameters(file)
    forward = session_forward(sess)
    result: dict[str, Any] = {
        "model": path,
        "runtime": "onnxruntime",
        "accuracy": accuracy_of_predictions(logits.argmax(-1).tolist(), encoded, data.domain_names),
        "parameters": total,
        "nonzero_parameters": nonzero,
        "latency": latency_grid(forward, config, vocab_size=int(model_config["vocab_size"])),
        "size_bytes": file.stat().st_size,
        "size_files": [file.name],
        "encoder_sparsity": None,
        "notes": [],
    }
    if nonzero < 0.9 * total:
        result["notes"].append(ONNX_SPARSITY_NOTE)
    return result


def encoder_sparsity(model: Any) -> float | None:
    """Fraction of zeros in the encoder's Linear weights (None for a layout kdtui does not know)."""
    try:
        weights = [linear.weight for linear in encoder_linears(model).values()]
    except KdtuiError:
        return None
    zeros = sum(w.numel() - int(torch.count_nonzero(w)) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def weights_files(path: str, folder: Path) -> list[Path]:
    """The files whose size is reported: for a run directory that has a compressed sparse model
    (RUN/model-sparse, written by `kdtui prune`) that file, else the model folder's weights."""
    from kdtui.rundir import RunLayout
    from kdtui.sparse import SPARSE_FILE

    sparse = RunLayout(Path(path).expanduser()).sparse_model / SPARSE_FILE
    if sparse.is_file():
        return [sparse]
    return sorted(p for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))


def _shown(file: Path, path: str) -> str:
    try:
        return str(file.relative_to(Path(path).expanduser()))
    except ValueError:
        return file.name


def torch_forward(model: Any) -> Callable[[dict[str, torch.Tensor]], Any]:
    return lambda inputs: model(**inputs)


@torch.no_grad()
def latency_grid(
    forward: Callable[[dict[str, torch.Tensor]], Any], config: Config, *, vocab_size: int
) -> list[dict[str, float]]:
    """Median forward time over `latency_repeats` runs per (batch, length), after a warm-up."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    for batch in config.evaluate.batch_sizes:
        for length in config.evaluate.lengths:
            ids = torch.randint(1000, min(vocab_size, 20000), (batch, length), generator=generator)
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            call = functools.partial(forward, inputs)
            (median,) = median_seconds([call], config.evaluate.latency_repeats, rounds=1)
            rows.append(
                {
                    "batch": batch,
                    "length": length,
                    "ms": median * 1000,
                    "examples_per_s": batch / median,
                }
            )
    return rows
