"""`kdtui evaluate`: accuracy per domain, size and speed of one or more models, side by side.

No run directory is written: evaluation only reads. The report is a plain dict (the CLI renders
it as a table or writes it as JSON)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from kdtui.config import Config
from kdtui.data import MultiDomainData, encode, load_data
from kdtui.engine.evaluate import accuracy_of_predictions, predictions_in_order
from kdtui.errors import KdtuiError
from kdtui.models import (
    LABELS_KEY,
    check_max_length,
    label_names_of,
    load_model_tokenizer,
    resolve_model_path,
)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")

SPARSITY_NOTE = (
    "unstructured sparsity makes the model smaller on disk but not faster: dense PyTorch "
    "kernels multiply the zeros too"
)
STRUCTURED_NOTE = (
    "pruned heads and FFN neurons are physically removed: fewer parameters, smaller and faster"
)


def evaluate_models(paths: list[str], config: Config) -> dict[str, Any]:
    data = load_data(config.data)
    split = data.split(config.evaluate.split)
    report: dict[str, Any] = {
        "split": config.evaluate.split,
        "data": config.data.source,
        "domains": data.domain_names,
        "examples": len(split),
        "threads": torch.get_num_threads(),
        "models": [],
    }
    for path in expand_runs(paths):
        report["models"].append(evaluate_one(path, config, data))
    return report


def expand_runs(paths: list[str]) -> list[str]:
    """A `kdtui distill --domain all` run holds one student per domain (RUN/domains/D): it
    stands for all of them."""
    from kdtui.rundir import RunInfo

    expanded = []
    for path in paths:
        students = RunInfo(Path(path).expanduser()).students()
        if students:
            expanded += [str(s) for s in students]
        else:
            expanded.append(path)
    return expanded


def evaluate_one(path: str, config: Config, data: MultiDomainData) -> dict[str, Any]:
    from kdtui.models import load_any

    folder = Path(resolve_model_path(path))
    model = load_any(folder)
    model.eval()
    model_labels = label_names_of(model)
    if len(model_labels) != len(data.label_names):
        raise KdtuiError(
            f"model {path} predicts {len(model_labels)} labels but the data has "
            f"{len(data.label_names)} ({', '.join(data.label_names)})"
        )
    trained = getattr(model.config, LABELS_KEY, None)  # names are known for kdtui's models
    if trained is not None and list(trained) != list(data.label_names):
        raise KdtuiError(
            f"model {path} was trained for labels {list(trained)} but the data has "
            f"{list(data.label_names)}"
        )
    check_max_length(config.data.max_length, path, model.config.to_dict())
    tokenizer = load_model_tokenizer(folder, trust_remote_code=config.model.trust_remote_code)
    split = data.split(config.evaluate.split)
    encoded = encode(split, tokenizer, config.data.max_length)
    predictions = predictions_in_order(
        model,
        encoded,
        batch_size=config.train.eval_batch_size,
        pad_id=tokenizer.pad_token_id or 0,
        device=torch.device("cpu"),
    )
    accuracy = accuracy_of_predictions(predictions, encoded, data.domain_names)
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    nonzero = sum(int(torch.count_nonzero(p)) for p in params)
    result: dict[str, Any] = {
        "model": path,
        "accuracy": accuracy,
        "parameters": total,
        "nonzero_parameters": nonzero,
        "latency": latency_grid(model, config, vocab_size=model.config.vocab_size),
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
    return result


def encoder_sparsity(model: Any) -> float | None:
    """Fraction of zeros in the encoder's Linear weights (None for non-BERT layouts)."""
    from kdtui.methods.pruning import encoder_linears

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


@torch.no_grad()
def latency_grid(model: Any, config: Config, *, vocab_size: int) -> list[dict[str, float]]:
    """Median forward time over `latency_repeats` runs per (batch, length), after a warm-up."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    for batch in config.evaluate.batch_sizes:
        for length in config.evaluate.lengths:
            ids = torch.randint(1000, min(vocab_size, 20000), (batch, length), generator=generator)
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            model(**inputs)
            times = []
            for _ in range(config.evaluate.latency_repeats):
                start = time.perf_counter()
                model(**inputs)
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            rows.append(
                {
                    "batch": batch,
                    "length": length,
                    "ms": median * 1000,
                    "examples_per_s": batch / median,
                }
            )
    return rows
