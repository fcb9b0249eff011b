"""Engine overhead against a bare PyTorch loop doing the same work on the same batches.

Both loops run the same model, the same examples in the same order, forward + cross-entropy +
backward + gradient clipping + AdamW + LR schedule. The engine additionally does what it is
for: hooks, named loss terms, event logging per step, sharding bookkeeping. Checkpoints and
evaluation are pushed past the end (except the engine's final checkpoint, timed separately).

    python bench/overhead.py                 # MiniLM, length 64, batch 16, 30 timed steps
    python bench/overhead.py --model tiny    # quick check
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternate bare/engine this often")
    args = parser.parse_args()
    result = measure(args.model, args.steps, args.batch_size, args.max_length, args.repeats)
    print(
        f"model {args.model}, {args.steps} steps, batch {args.batch_size}, length "
        f"{args.max_length}, {torch.get_num_threads()} threads (best of {args.repeats})"
    )
    print("| loop | s/step | total s |")
    print("| --- | --- | --- |")
    print(f"| bare PyTorch | {result['bare'] / args.steps:.4f} | {result['bare']:.2f} |")
    print(f"| kdtui engine | {result['engine'] / args.steps:.4f} | {result['engine']:.2f} |")
    print(f"| overhead | {result['overhead_pct']:+.1f}% | |")
    print(f"| engine's final checkpoint write | | {result['checkpoint']:.2f} |")


def measure(model_name: str, steps: int, batch_size: int, max_length: int, repeats: int) -> dict:
    """Best-of-`repeats` wall seconds of the bare loop and of the engine (training part), the
    engine's final checkpoint write, and the overhead in percent."""
    from accelerate import Accelerator

    from kdtui.config import Config, DataConfig, ModelConfig, TrainConfig
    from kdtui.data import collate, encode, load_data
    from kdtui.engine.hooks import CrossEntropyHook
    from kdtui.engine.loop import TrainJob, epoch_order, train, warmup_then_linear_decay
    from kdtui.models import load_classifier, load_tokenizer
    from kdtui.rundir import RunDir

    cfg = Config(
        data=DataConfig(max_length=max_length, synthetic_train_per_domain=200),
        model=ModelConfig(name=model_name),
        train=TrainConfig(
            max_steps=steps,
            batch_size=batch_size,
            eval_every=10**9,
            checkpoint_every=10**9,
            warmup_ratio=0.1,
            precision="fp32",  # the bare loop it is compared with is fp32
        ),
    )
    data = load_data(cfg.data)
    tokenizer = load_tokenizer(cfg.model)
    encoded = encode(data.train, tokenizer, cfg.data.max_length)
    pad_id = tokenizer.pad_token_id or 0
    accelerator = Accelerator()

    def fresh_model() -> torch.nn.Module:
        return load_classifier(cfg.model, data.label_names, seed=0)

    def bare() -> float:
        model = fresh_model()
        model.train()
        torch.manual_seed(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=0.01)
        warmup = int(cfg.train.warmup_ratio * steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_then_linear_decay(s, warmup, steps)
        )
        per_epoch = len(encoded) // batch_size
        start = time.perf_counter()
        for step in range(steps):
            # The same examples as the engine: a seeded permutation per epoch, full batches.
            epoch, position = divmod(step, per_epoch)
            order = epoch_order(len(encoded), 0, epoch)
            indices = order[position * batch_size : (position + 1) * batch_size]
            batch = collate(encoded, indices, pad_id)
            optimizer.zero_grad(set_to_none=True)
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"],
            ).logits
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            float(loss.detach())  # the engine logs the loss each step; read it here too
        return time.perf_counter() - start

    def engine() -> tuple[float, float]:
        model = fresh_model()
        with tempfile.TemporaryDirectory() as tmp:
            run = RunDir(Path(tmp) / "run")
            run.open(fresh=True)
            checkpoint_time = [0.0]

            def note_checkpoint(event: object) -> None:
                if getattr(event, "type", "") == "checkpoint":
                    checkpoint_time[0] = time.perf_counter()

            run.listeners.append(note_checkpoint)
            job = TrainJob(
                model=model,
                train=encoded,
                dev=None,
                domain_names=data.domain_names,
                hooks=[CrossEntropyHook()],
                cfg=replace(cfg.train),
                run=run,
                accelerator=accelerator,
                pad_id=pad_id,
                seed=0,
                checkpoint_dir=Path(tmp) / "run" / "checkpoints",
            )
            start = time.perf_counter()
            marks: list[float] = []
            run.listeners.append(
                lambda e: (
                    marks.append(time.perf_counter()) if getattr(e, "type", "") == "step" else None
                )
            )
            train(job)
            end = time.perf_counter()
            run.close()
        # The training part ends at the last step event; the final checkpoint write follows.
        return marks[-1] - start, end - marks[-1]

    rows = []
    for _ in range(repeats):
        b = bare()
        e, ckpt = engine()
        rows.append((b, e, ckpt))
    bare_best = min(r[0] for r in rows)
    engine_best = min(r[1] for r in rows)
    return {
        "bare": bare_best,
        "engine": engine_best,
        "checkpoint": min(r[2] for r in rows),
        "overhead_pct": 100 * (engine_best / bare_best - 1),
    }


if __name__ == "__main__":
    main()
