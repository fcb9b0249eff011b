"""The loop's warning when a model collapses on dev, on a tiny BERT: it fires on a crafted
one-class collapse (with the hooks' diagnosis) and on a model that mixes its answers at chance,
and not on a model that predicts both classes better than the most common class."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from kdtui.config import TrainConfig
from kdtui.data import Encoded
from kdtui.engine.hooks import BaseHook, CrossEntropyHook
from kdtui.engine.loop import TrainJob, train
from kdtui.events import Message
from kdtui.rundir import RunDir
from tests.conftest import events_of
from tests.test_pruning import tiny_bert


def encoded(n: int, seed: int, labels: list[int] | None = None) -> Encoded:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (n, 8), generator=generator).tolist()
    return Encoded(
        input_ids=ids,
        token_type_ids=[[0] * 8 for _ in ids],
        labels=labels if labels is not None else [i % 2 for i in range(n)],
        domains=[0] * n,
        ids=list(range(n)),
    )


class Diagnosis(BaseHook):
    name = "diagnosis"

    def diagnosis(self) -> str:
        return "crafted cause: change prune.something"


def run(tmp_path: Path, bias: float, dev_labels: list[int] | None = None) -> list[str]:
    model = tiny_bert()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([bias, 0.0]))
    run_dir = RunDir(tmp_path / f"run{bias}")
    run_dir.open(fresh=True)
    train(
        TrainJob(
            model=model,
            train=encoded(16, 0),
            dev=encoded(16, 1, dev_labels),
            domain_names=["all"],
            hooks=[CrossEntropyHook(), Diagnosis()],
            cfg=TrainConfig(max_steps=2, batch_size=8, lr=0.0, eval_every=1),
            run=run_dir,
            accelerator=Accelerator(cpu=True),
            pad_id=0,
            seed=0,
            checkpoint_dir=run_dir.checkpoints,
        )
    )
    run_dir.close()
    return [
        e.text
        for e in events_of(run_dir.path)
        if isinstance(e, Message) and e.level == "warning" and "collapsed" in e.text
    ]


def test_a_collapsed_model_gets_one_warning_with_the_hooks_diagnosis(tmp_path: Path) -> None:
    warnings = run(tmp_path, bias=100.0)  # class 0 for every input; lr 0 keeps it there
    assert len(warnings) == 1  # two evaluations, one warning
    assert "one class for every dev example at step 1" in warnings[0]
    assert "crafted cause" in warnings[0]


def predictions_with_median_bias() -> tuple[float, list[int]]:
    """The bias that splits the dev set between the classes (the median logit margin), and the
    classes the model then predicts."""
    model = tiny_bert()
    logits = model(input_ids=torch.tensor(encoded(16, 1).input_ids)).logits
    margin = (logits[:, 1] - logits[:, 0]).median().item()
    return margin, (logits[:, 1] - logits[:, 0] > margin).long().tolist()


def test_a_model_that_predicts_both_classes_better_than_chance_gets_none(tmp_path: Path) -> None:
    margin, predicted = predictions_with_median_bias()
    assert len(set(predicted)) == 2
    labels = list(predicted)
    labels[0] = 1 - labels[0]  # 15 of 16 right, both classes predicted
    assert run(tmp_path, bias=margin, dev_labels=labels) == []


def test_a_model_at_chance_that_mixes_classes_gets_a_warning(tmp_path: Path) -> None:
    margin, predicted = predictions_with_median_bias()
    labels = [1 - p for p in predicted]  # both classes predicted, every one wrong
    warnings = run(tmp_path, bias=margin, dev_labels=labels)
    assert len(warnings) == 1
    assert "no better on dev (0.0%) than always predicting the most common class" in warnings[0]
