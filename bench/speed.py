"""kdtui's speed figures on the machine it runs on, in one command, as markdown tables.

1. engine overhead against a bare PyTorch loop (bench/overhead.py; target at most 5%);
2. distillation throughput through the real engine (MiniLM teacher, a 2-layer student copied
   from it): prediction-layer KD with the teacher running every step or its logits cached,
   the intermediate-layer stage, pruning with KD live or cached, CAP pruning (PrC, FiC and
   SnC banks) with the teacher live or its logits and bank vectors cached, each fp32 and bf16;
2b. utilisation ("utilisation"): this machine's matrix-multiply peak (fp32 and bf16, MiniLM's FFN
   shape at --batch-size x --length tokens and a 2048 square, at the thread count used) and the
   achieved FLOP/s of a MiniLM fine-tuning step, a cached-logits KD step and a cached CAP pruning
   step, counted analytically from the encoder's matrix products, as a share of that peak;
2c. torch.compile ("compile"): a MiniLM fine-tuning step eager against compiled (inductor), fp32
   and bf16: speed, compile time, and the largest loss difference from the same weights;
2d. profile ("profile"): where a MiniLM fine-tuning step's time goes (torch.profiler self time
   grouped into matrix products, attention kernel, casts, AdamW, LayerNorm/GELU/dropout, other)
   in bf16 and fp32, and the matrix products' own GFLOP/s against the matmul peak;
3. start-up: `kdtui --help` (target under 0.3 s) and the dashboard's first frame;
4. compressed models: size on disk and inference throughput against the dense model (structured
   heads-ffn removal at 50%; unstructured 90% / 97% in kdtui's bitmask format);
5. deployment ("deploy"): the trained models of bench/prune.py (dense teacher, heads-ffn 50%,
   unstructured 90% and 97%) in PyTorch fp32, the unstructured ones also with sparse kernels,
   and each exported to ONNX and run by ONNX Runtime in fp32 and int8, at batch 1 and 32,
   length 128, with each one's test accuracy and its largest logit difference to the model
   it came from. Needs the export extra and the finished runs (--runs, --dense, ...).

Inputs of tables 1-4 and the latencies of 5 are random token ids of exactly --length tokens, so
the figures do not depend on a data set. Weights in 1-4 are MiniLM's (the classifier head is
random): speed does not depend on them.

    python bench/speed.py                    # about 10 minutes on 2 CPU cores (+ deploy)
    python bench/speed.py --quick            # fewer steps, a first look
    python bench/speed.py --tables deploy --runs /path/to/bench-prune-output
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per row")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--tables",
        default="overhead,throughput,utilisation,compile,profile,startup,compressed,deploy",
        help="which tables, comma-separated (default: all eight)",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=Path("/tmp/kdtui-bench-prune"),
        help="deploy: the folder of bench/prune.py's runs (its --output-dir)",
    )
    parser.add_argument("--dense", default="teacher", help="deploy: the dense run, in --runs")
    parser.add_argument("--heads-ffn", default="heads-ffn-50-s1", help="deploy: heads-ffn run")
    parser.add_argument(
        "--unstructured-90", default="movement-90-s1", help="deploy: an unstructured 90%% run"
    )
    parser.add_argument(
        "--unstructured-97", default="soft-movement-97-s1", help="deploy: an unstructured 97%% run"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="deploy: CPU threads (PyTorch and ONNX Runtime)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="deploy: timed forwards per cell")
    args = parser.parse_args()
    if args.quick:
        args.steps = 4

    from kdtui.precision import cpu_has_native_bf16

    print(f"kdtui speed figures: {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(
        f"CPU: {getattr(torch.cpu, 'get_capabilities', dict)().get('cpu_name', '?')}, "
        f"native bf16: {'yes' if cpu_has_native_bf16() else 'no (emulated)'}"
    )
    print(f"(batch {args.batch_size}, length {args.length}; best of 2 where repeated)\n")
    tables = {
        "overhead": lambda: overhead_table(args),
        "throughput": lambda: distill_table(args),
        "utilisation": lambda: utilisation_table(args),
        "compile": lambda: compile_table(args),
        "profile": lambda: profile_table(args),
        "startup": startup_table,
        "compressed": lambda: compressed_table(args),
        "deploy": lambda: deploy_table(args),
    }
    for name in args.tables.split(","):
        if name not in tables:
            sys.exit(f"--tables: unknown table {name!r}; choose from {', '.join(tables)}")
        tables[name]()


# ---------------------------------------------------------------------------------------------
# 1. Engine overhead


def overhead_table(args: argparse.Namespace) -> None:
    import overhead

    # A few percent is the target, so the loops need enough steps to be measured to that:
    # 24 steps gave +5.5% and -4.6% in two runs, 60 steps best of 3 gave +1.2%.
    steps = max(20, 5 * args.steps)
    r = overhead.measure("minilm", steps, args.batch_size, 64, repeats=3)
    print(f"## Engine overhead (MiniLM fine-tuning, length 64, {steps} steps, best of 3)\n")
    print("| loop | s/step |")
    print("| --- | --- |")
    print(f"| bare PyTorch | {r['bare'] / steps:.3f} |")
    print(f"| kdtui engine | {r['engine'] / steps:.3f} |")
    print(f"| overhead | {r['overhead_pct']:+.1f}% (target <= +5%) |\n")


# ---------------------------------------------------------------------------------------------
# 2. Distillation and pruning throughput


def fixed_length_examples(n: int, length: int, vocab: int, seed: int = 0) -> Any:
    from kdtui.data import Encoded

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, min(vocab, 20000), (n, length - 2), generator=g)
    rows = [[101, *row.tolist(), 102] for row in ids]
    return Encoded(
        input_ids=rows,
        token_type_ids=[[0] * length for _ in rows],
        labels=[i % 2 for i in range(n)],
        domains=[0] * n,
        ids=list(range(n)),
    )


def time_steps(
    model: Any,
    hooks: list[Any],
    data: Any,
    args: argparse.Namespace,
    bf16: bool,
    steps: int,
    losses: list[float] | None = None,
    term_grad_norms: bool = True,
) -> float:
    """Examples per second over `steps` engine steps (after one untimed warm-up step); the
    loss of every step is appended to LOSSES when given. TERM_GRAD_NORMS off drops the engine's
    per-term gradient norms (a second backward with the graph kept, which compiled backward
    functions with donated buffers refuse)."""
    from accelerate import Accelerator

    from kdtui.config import TrainConfig
    from kdtui.engine.loop import TrainJob, train
    from kdtui.rundir import RunDir

    cfg = TrainConfig(
        max_steps=steps + 1,
        batch_size=args.batch_size,
        precision="bf16" if bf16 else "fp32",
        eval_every=10**9,
        checkpoint_every=10**9,
        term_grad_norms=term_grad_norms,
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "run")
        run.open(fresh=True)
        marks: list[float] = []

        def listen(event: Any) -> None:
            if event.type == "step":
                marks.append(time.perf_counter())
                if losses is not None:
                    losses.append(event.loss)

        run.listeners.append(listen)
        train(
            TrainJob(
                model=model,
                train=data,
                dev=None,
                domain_names=["all"],
                hooks=hooks,
                cfg=cfg,
                run=run,
                accelerator=Accelerator(),
                pad_id=0,
                seed=0,
                checkpoint_dir=Path(tmp) / "run" / "checkpoints",
            )
        )
        run.close()
    return steps * args.batch_size / (marks[-1] - marks[0])


def training_rows(args: argparse.Namespace) -> tuple[Any, Any, list[tuple[Any, ...]]]:
    """(MiniLM, the timed examples, rows): each row is (label, make model, make hooks, layers
    trained, teacher layers run forward only), the last two for counting FLOPs."""
    from kdtui.config import ModelConfig
    from kdtui.engine.evaluate import predict_logits
    from kdtui.engine.hooks import CrossEntropyHook
    from kdtui.methods.contrastive import CapHook, MemoryBank
    from kdtui.methods.kd import KdHook
    from kdtui.methods.meta_kd import (
        IntermediateDistillHook,
        PredictionDistillHook,
        uniform_layer_map,
    )
    from kdtui.methods.pruning import UnstructuredPruner
    from kdtui.models import build_student, load_classifier

    teacher = load_classifier(ModelConfig(name="minilm"), ["0", "1"], seed=0).eval()
    data = fixed_length_examples(
        (args.steps + 1) * args.batch_size, args.length, teacher.config.vocab_size
    )
    cached = predict_logits(
        teacher, data, range(len(data)), batch_size=64, pad_id=0, device=torch.device("cpu")
    )

    def student() -> Any:
        return build_student(teacher, num_layers=2, seed=0)

    def pruned() -> Any:
        model = copy.deepcopy(teacher)  # the distillation hooks froze the teacher's copy
        return model.requires_grad_(True).train()

    def prediction(use_cache: bool) -> list[Any]:
        return [
            PredictionDistillHook(
                teacher=teacher, temperature=2.0, cached_logits=cached if use_cache else None
            )
        ]

    def intermediate() -> list[Any]:
        s = student()
        return [
            IntermediateDistillHook(
                teacher=teacher,
                layer_map=uniform_layer_map(6, 2),
                student_hidden=s.config.hidden_size,
                teacher_hidden=teacher.config.hidden_size,
            )
        ]

    def prune_hooks(use_cache: bool) -> list[Any]:
        pruner = UnstructuredPruner(
            criterion="magnitude",
            target_sparsity=0.9,
            total_steps=args.steps + 1,
            warmup_steps=0,
            cooldown_steps=0,
        )
        kd = KdHook(temperature=2.0, teacher=teacher, logits_by_id=cached if use_cache else None)
        return [CrossEntropyHook(), kd, pruner]

    # CAP's fixed banks hold one vector per example, encoded before training (PrC, FiC); a
    # method that did not cache them would run the teacher every step for them and for its
    # logits, which is what the live row pays (its vectors come out of that same forward).
    labels_by_id = torch.tensor(data.labels)
    ids = torch.tensor(data.ids)
    vectors = torch.nn.functional.normalize(
        torch.randn(
            len(data), teacher.config.hidden_size, generator=torch.Generator().manual_seed(1)
        ),
        dim=-1,
    )

    def cap_hooks(use_cache: bool) -> list[Any]:
        hooks = prune_hooks(use_cache)
        fixed = {}
        for name in ("prc", "fic"):
            fixed[name] = MemoryBank(ids, labels_by_id, vectors.shape[1], 1)
            fixed[name].write(ids, vectors, 0)
        snapshots = MemoryBank(ids, labels_by_id, vectors.shape[1], 4)
        cap = CapHook(banks=fixed, snapshots=snapshots, stage=hooks[-1].stage, num_negatives=4096)
        return [*hooks, cap]

    rows = [
        ("MiniLM fine-tuning", pruned, lambda: [CrossEntropyHook()], 6, 0),
        ("student fine-tuning alone (no teacher)", student, lambda: [CrossEntropyHook()], 2, 0),
        ("prediction KD, teacher runs every step", student, lambda: prediction(False), 2, 6),
        ("prediction KD, teacher logits cached", student, lambda: prediction(True), 2, 0),
        ("intermediate stage (hidden + attention MSE)", student, intermediate, 2, 6),
        ("pruning MiniLM, KD teacher runs every step", pruned, lambda: prune_hooks(False), 6, 6),
        ("pruning MiniLM, KD logits cached", pruned, lambda: prune_hooks(True), 6, 0),
        (
            "CAP pruning (PrC+FiC+SnC), teacher runs every step",
            pruned,
            lambda: cap_hooks(False),
            6,
            6,
        ),
        (
            "CAP pruning (PrC+FiC+SnC), logits and banks cached",
            pruned,
            lambda: cap_hooks(True),
            6,
            0,
        ),
    ]
    return teacher, data, rows


def distill_table(args: argparse.Namespace) -> None:
    from kdtui.precision import cpu_has_native_bf16

    _, data, rows = training_rows(args)
    print(f"## Training throughput (examples/s, length {args.length})\n")
    print("| what | fp32 | bf16 autocast | bf16 speed-up |")
    print("| --- | --- | --- | --- |")
    # Emulated bf16 is so slow that a third of the steps measures it well enough.
    bf16_steps = args.steps if cpu_has_native_bf16() else max(2, args.steps // 3)
    for label, make_model, make_hooks, _, _ in rows[1:]:
        fp32 = time_steps(make_model(), make_hooks(), data, args, False, args.steps)
        bf16 = time_steps(make_model(), make_hooks(), data, args, True, bf16_steps)
        print(f"| {label} | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f}x |")
    print()


# ---------------------------------------------------------------------------------------------
# 2b. Utilisation: achieved FLOP/s of training steps against this machine's matmul peak


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 20) -> float:
    """Best-of-REPEATS GFLOP/s of an (m x k) @ (k x n) product at the current thread count."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b  # warm-up (kernel choice, page faults)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def encoder_flops_per_example(config: Any, length: int, layers: int) -> float:
    """Forward FLOPs of LAYERS BERT layers on one example of LENGTH tokens, counted from the
    matrix products only (2 per multiply-add): Q, K, V and output projections 4·2·T·h², the FFN
    2·2·T·h·i, attention scores and their weighted sum 2·2·T²·h. Softmax, LayerNorm, GELU,
    embeddings and the classifier are left out (well under 5% at these sizes)."""
    h, i, t = config.hidden_size, config.intermediate_size, length
    return layers * (8 * t * h * h + 4 * t * h * i + 4 * t * t * h)


def utilisation_table(args: argparse.Namespace) -> None:
    """Training steps' achieved FLOP/s (analytic count: a trained layer costs 3x its forward,
    the backward pass twice the forward's products; a teacher run every step costs 1x) as a
    share of the measured bf16 and fp32 matmul peaks."""
    teacher, data, rows = training_rows(args)
    h, i = teacher.config.hidden_size, teacher.config.intermediate_size
    tokens = args.batch_size * args.length
    shapes = {
        f"MiniLM FFN ({tokens}x{h} @ {h}x{i})": (tokens, h, i),
        "square 2048": (2048, 2048, 2048),
    }
    peaks = {}
    print(f"## Utilisation ({torch.get_num_threads()} threads, length {args.length})\n")
    print("| matrix product | fp32 GFLOP/s | bf16 GFLOP/s |")
    print("| --- | --- | --- |")
    for name, (m, k, n) in shapes.items():
        fp32, bf16 = (matmul_gflops(m, k, n, d) for d in (torch.float32, torch.bfloat16))
        peaks["fp32"] = max(peaks.get("fp32", 0.0), fp32)
        peaks["bf16"] = max(peaks.get("bf16", 0.0), bf16)
        print(f"| {name} | {fp32:.0f} | {bf16:.0f} |")
    print()
    print("| training step | precision | examples/s | GFLOP/s achieved | share of peak |")
    print("| --- | --- | --- | --- | --- |")
    wanted = (
        "MiniLM fine-tuning",
        "prediction KD, teacher logits cached",
        "CAP pruning (PrC+FiC+SnC), logits and banks cached",
    )
    for label, make_model, make_hooks, trained, forward_only in rows:
        if label not in wanted:
            continue
        per_example = 3 * encoder_flops_per_example(teacher.config, args.length, trained)
        per_example += encoder_flops_per_example(teacher.config, args.length, forward_only)
        for precision in ("fp32", "bf16"):
            rate = time_steps(
                make_model(), make_hooks(), data, args, precision == "bf16", args.steps
            )
            achieved = rate * per_example / 1e9
            print(
                f"| {label} | {precision} | {rate:.1f} | {achieved:.0f} "
                f"| {100 * achieved / peaks[precision]:.0f}% of {peaks[precision]:.0f} |"
            )
    print()


# Op name fragments -> the part of a training step they belong to; the first match wins.
STEP_PARTS = (
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention kernel (SDPA, forward and backward)", ("scaled_dot_product", "flash_attention")),
    ("dtype casts (autocast)", ("aten::to", "aten::_to_copy", "aten::copy_")),
    ("optimiser (AdamW)", ("adam", "_foreach")),
    (
        "LayerNorm, GELU, dropout, softmax",
        ("layer_norm", "gelu", "dropout", "bernoulli", "softmax"),
    ),
)


def step_part(op: str) -> str:
    for part, fragments in STEP_PARTS:
        if any(op == f or (not f.startswith("aten::") and f in op) for f in fragments):
            return part
    return "other (element-wise, embeddings, loss, bookkeeping)"


def profile_table(args: argparse.Namespace) -> None:
    """Where a MiniLM fine-tuning step spends its time, bf16 and fp32: torch.profiler's self
    time per op over --steps steps (forward, backward, AdamW; the engine's bookkeeping is the
    overhead table's), grouped into parts, and the matrix products' own GFLOP/s (the analytic
    count of encoder_flops_per_example over their measured time), against the matmul peak."""
    from torch.profiler import ProfilerActivity, profile

    from kdtui.config import ModelConfig
    from kdtui.models import load_classifier

    model = load_classifier(ModelConfig(name="minilm"), ["0", "1"], seed=0).train()
    config = model.config
    data = fixed_length_examples(args.batch_size, args.length, config.vocab_size)
    ids = torch.tensor(data.input_ids)
    labels = torch.tensor(data.labels)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)
    # every matrix product, attention's included: the backward pass twice the forward's
    flops = 3 * encoder_flops_per_example(config, args.length, config.num_hidden_layers)
    flops *= args.batch_size
    h, i = config.hidden_size, config.intermediate_size
    tokens = args.batch_size * args.length

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    print(f"## Where a training step's time goes ({torch.get_num_threads()} threads)\n")
    print(f"MiniLM fine-tuning, batch {args.batch_size}, length {args.length}, {args.steps} "
          "profiled steps after 2 unprofiled ones.\n")  # fmt: skip
    results = {}
    for bf16 in (True, False):
        dtype = torch.bfloat16 if bf16 else torch.float32
        peak = matmul_gflops(tokens, h, i, dtype)
        for _ in range(2):
            step(bf16)
        start = time.perf_counter()
        for _ in range(args.steps):
            step(bf16)
        wall = (time.perf_counter() - start) / args.steps
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step(bf16)
        parts: dict[str, float] = {}
        for event in prof.key_averages():
            part = step_part(event.key)
            parts[part] = parts.get(part, 0.0) + event.self_cpu_time_total / 1e6 / args.steps
        results["bf16" if bf16 else "fp32"] = (wall, parts, peak)
    names = sorted({p for _, parts, _ in results.values() for p in parts},
                   key=lambda p: -results["bf16"][1].get(p, 0.0))  # fmt: skip
    print("| part of the step | bf16 ms | bf16 share | fp32 ms | fp32 share |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        cells = []
        for precision in ("bf16", "fp32"):
            _, parts, _ = results[precision]
            total = sum(parts.values())
            cells += [
                f"{1e3 * parts.get(name, 0.0):.0f}",
                f"{100 * parts.get(name, 0) / total:.0f}%",
            ]
        print(f"| {name} | {' | '.join(cells)} |")
    print()
    print("| precision | step ms (unprofiled) | profiled ms | matrix products GFLOP/s "
          "| matmul peak GFLOP/s | whole step GFLOP/s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for precision, (wall, parts, peak) in results.items():
        mm = parts.get(STEP_PARTS[0][0], 0.0)
        print(
            f"| {precision} | {1e3 * wall:.0f} | {1e3 * sum(parts.values()):.0f} "
            f"| {flops / mm / 1e9:.0f} | {peak:.0f} | {flops / wall / 1e9:.0f} |"
        )
    print()


def compile_table(args: argparse.Namespace) -> None:
    """torch.compile (inductor) for the training step: MiniLM fine-tuning through the engine,
    eager against `model.compile()`, fp32 and bf16. The speed run keeps dropout; the tolerance
    run turns dropout off (compiled code draws other random numbers) and compares the loss of
    every step from the same weights on the same batches. Inputs are of fixed length, so the
    compiled graph is built once (real batches vary in length: more compilations). Both sides
    skip the engine's per-term gradient norms (see time_steps)."""
    from kdtui.config import ModelConfig
    from kdtui.engine.hooks import CrossEntropyHook
    from kdtui.models import load_classifier

    teacher = load_classifier(ModelConfig(name="minilm"), ["0", "1"], seed=0)
    data = fixed_length_examples(
        (args.steps + 1) * args.batch_size, args.length, teacher.config.vocab_size
    )

    def model(dropout: bool, compiled: bool) -> Any:
        m = copy.deepcopy(teacher).train()
        if not dropout:
            for module in m.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        if compiled:
            m.compile()
        return m

    print(f"## torch.compile, MiniLM fine-tuning ({torch.get_num_threads()} threads)\n")
    print("| precision | eager ex/s | compiled ex/s | speed-up | first step (compile) s "
          "| largest loss difference |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    hooks = [CrossEntropyHook()]
    for bf16 in (False, True):
        eager = time_steps(model(True, False), hooks, data, args, bf16, args.steps, None, False)
        start = time.perf_counter()
        compiled_model = model(True, True)
        first: list[float] = []
        rate = time_steps(compiled_model, hooks, data, args, bf16, args.steps, first, False)
        setup = time.perf_counter() - start - len(first[1:]) * args.batch_size / rate
        losses = []
        for compiled in (False, True):
            seen: list[float] = []
            time_steps(model(False, compiled), hooks, data, args, bf16, 4, seen, False)
            losses.append(seen)
        diff = max(abs(a - b) for a, b in zip(*losses, strict=True))
        print(
            f"| {'bf16' if bf16 else 'fp32'} | {eager:.1f} | {rate:.1f} | {rate / eager:.2f}x "
            f"| {setup:.0f} | {diff:.2g} |"
        )
    print()


# ---------------------------------------------------------------------------------------------
# 3. Start-up


def best_wall(command: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


DASHBOARD_FIRST_FRAME = """
import asyncio, sys, time
from pathlib import Path
start = time.perf_counter()
from kdtui.dashboard.app import create_app
async def main():
    app = create_app(Path(sys.argv[1]))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
    print(time.perf_counter() - start)
asyncio.run(main())
"""


def startup_table() -> None:
    from kdtui.events import RunFinished, RunStarted, Step
    from kdtui.runlog import EventSink

    help_s = best_wall(["kdtui", "--help"])
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        sink = EventSink(run / "events.jsonl")
        sink.write(RunStarted(run="run", command="teacher", profile="", total_steps=100, config={}))
        for s in range(1, 101):
            sink.write(
                Step(
                    step=s,
                    total_steps=100,
                    epoch=s / 100,
                    lr=1e-4,
                    loss=1 / s,
                    losses={"ce": 1 / s},
                )
            )
        sink.write(RunFinished(step=100, metrics={}))
        sink.close()
        frames = []
        for _ in range(3):
            out = subprocess.run(
                [sys.executable, "-c", DASHBOARD_FIRST_FRAME, str(run)],
                check=True,
                capture_output=True,
                text=True,
            )
            frames.append(float(out.stdout.strip().splitlines()[-1]))
    print("## Start-up\n")
    print("| what | seconds |")
    print("| --- | --- |")
    print(f"| `kdtui --help` (best of 5, whole process) | {help_s:.2f} (target < 0.3) |")
    print(
        f"| dashboard: imports + first frame of a finished run, headless (best of 3) | "
        f"{min(frames):.2f} |\n"
    )


# ---------------------------------------------------------------------------------------------
# 4. Compressed models


@torch.no_grad()
def throughput(model: Any, batch: int, length: int, repeats: int = 5) -> float:
    """Examples per second of a forward pass (median of `repeats`, after a warm-up)."""
    from kdtui.timing import median_seconds

    ids = torch.randint(1000, 20000, (batch, length), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    model.eval()
    (median,) = median_seconds([lambda: model(**inputs)], repeats)
    return batch / median


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix == ".safetensors")


def compressed_table(args: argparse.Namespace) -> None:
    from kdtui.config import ModelConfig
    from kdtui.layout import encoder_layers, is_matrix_weight
    from kdtui.methods.compact import compact
    from kdtui.methods.pruning import magnitude_prune
    from kdtui.models import load_any, load_classifier, load_tokenizer, save_classifier
    from kdtui.sparse import SPARSE_FILE, save_sparse

    def encoder_bytes(state: dict[str, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for k, t in state.items() if is_matrix_weight(k))

    labels = ["0", "1"]
    dense = load_classifier(ModelConfig(name="minilm"), labels, seed=0).eval()
    dense_encoder = encoder_bytes(dense.state_dict())
    tokenizer = load_tokenizer(ModelConfig(name="minilm"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_classifier(dense, tokenizer, root / "dense", labels)
        dense_bytes = folder_bytes(root / "dense")
        rows.append(("dense MiniLM (fp32)", dense_bytes, dense_encoder, dense))

        # Structured: keep half the heads and half the FFN neurons of every layer (which ones
        # does not matter for speed), removed for real, saved and loaded back.
        small = copy.deepcopy(dense)
        layers = encoder_layers(small)
        heads = [list(range(small.config.num_attention_heads // 2)) for _ in layers]
        neurons = [list(range(small.config.intermediate_size // 2)) for _ in layers]
        compact(small, heads, neurons)
        save_classifier(small, tokenizer, root / "heads-ffn", labels)
        rows.append(
            (
                "heads-ffn 50% removed",
                folder_bytes(root / "heads-ffn"),
                encoder_bytes(small.state_dict()),
                load_any(root / "heads-ffn"),
            )
        )

        for sparsity in (0.9, 0.97):
            sparse = copy.deepcopy(dense)
            magnitude_prune(sparse, sparsity)
            for values in ("float32", "float16"):
                folder = root / f"sparse-{sparsity}-{values}"
                sparse.config.save_pretrained(folder)
                sizes = save_sparse(sparse.state_dict(), folder / SPARSE_FILE, values=values)
                stored = sum(v["stored"] for k, v in sizes.items() if is_matrix_weight(k))
                label = f"unstructured {sparsity:.0%} zeros, bitmask + {values} values"
                rows.append((label, folder_bytes(folder), stored, load_any(folder)))

        print("## Compressed models (size of the weight files, forward throughput)\n")
        print(
            "| model | weight files | vs dense | encoder Linear weights vs dense "
            "| ex/s b32 len128 | speed-up | ex/s b1 len128 |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        base = throughput(dense, 32, 128)
        for label, size, encoder, model in rows:
            t32 = throughput(model, 32, 128)
            t1 = throughput(model, 1, 128, repeats=10)
            print(
                f"| {label} | {size / 2**20:.1f} MiB | {size / dense_bytes:.0%} "
                f"| {encoder / dense_encoder:.1%} | {t32:.1f} | {t32 / base:.2f}x | {t1:.1f} |"
            )
        print(
            "\nThe word embeddings (30,522 x 384) are 52% of MiniLM's weights and are not pruned; "
            "the encoder column is what pruning compresses."
        )
    print(
        "\nUnstructured sparsity shrinks the file, not the time: the loaded model is dense and "
        "PyTorch's dense kernels multiply the zeros too (the deploy table times sparse kernels).\n"
    )


# ---------------------------------------------------------------------------------------------
# 5. Deployment: sparse kernels and ONNX Runtime on trained models


def deploy_table(args: argparse.Namespace) -> None:
    from kdtui.data import load_data
    from kdtui.export import export_model, session, session_forward
    from kdtui.exportdir import INT8_FILE, ONNX_FILE
    from kdtui.models import read_config_json
    from kdtui.recipes.evaluate import evaluate_one, latency_grid
    from kdtui.resolver import resolve

    runs = {
        "dense": args.runs / args.dense,
        "heads-ffn 50%": args.runs / args.heads_ffn,
        "unstructured 90%": args.runs / args.unstructured_90,
        "unstructured 97%": args.runs / args.unstructured_97,
    }
    missing = [str(path) for path in runs.values() if not (path / "config.toml").is_file()]
    if missing:
        print(
            f"## Deployment: skipped, no run at {', '.join(missing)} (bench/prune.py makes them)\n"
        )
        return
    length = args.length
    overrides = [
        f"run.threads={args.threads}",
        "evaluate.batch_sizes=[1, 32]",
        f"evaluate.lengths=[{length}]",
        f"evaluate.latency_repeats={args.repeats}",
        "evaluate.sparse_kernels=auto",
        # This table times the plain and int8 graphs; the optimised ones: bench/export_speed.py.
        "export.optimize=none",
    ]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, run in runs.items():
            config, _ = resolve(str(run / "config.toml"), overrides, {})
            torch.set_num_threads(args.threads)
            data = load_data(config.data)
            report = evaluate_one(str(run), config, data)
            ms = {r["batch"]: r["ms"] for r in report["latency"]}
            acc = report["accuracy"]["all"]
            rows.append(
                {"model": label, "runtime": "PyTorch fp32", "ms": ms, "acc": acc, "base": acc}
            )
            sparse = report.get("sparse_kernels")
            if sparse is not None and sparse["matrices"]:
                rows.append(
                    {
                        "model": label,
                        "runtime": "PyTorch fp32, sparse kernels",
                        "ms": {r["batch"]: r["ms"] for r in sparse["latency"]},
                        "acc": sparse["accuracy"]["all"],
                        "base": acc,
                        "diff": sparse["max_logit_diff"],
                        "note": f"{len(sparse['matrices'])}/{sparse['of']} matrices CSR",
                    }
                )
            elif sparse is not None:
                rows.append(
                    {
                        "model": label,
                        "runtime": "PyTorch fp32, sparse kernels",
                        "ms": ms,
                        "acc": acc,
                        "base": acc,
                        "note": f"0/{sparse['of']} matrices measured faster as CSR: all dense",
                    }
                )
            folder = Path(tmp) / label.replace(" ", "-").replace("%", "")
            info = export_model(str(run), folder, config, int8=True)
            for name, runtime in (
                (ONNX_FILE, "ONNX Runtime fp32"),
                (INT8_FILE, "ONNX Runtime int8"),
            ):
                check = info["check"][name]
                forward = session_forward(session(folder / name, args.threads))
                grid = latency_grid(
                    forward, config, vocab_size=read_config_json(folder)["vocab_size"]
                )
                rows.append(
                    {
                        "model": label,
                        "runtime": runtime,
                        "ms": {r["batch"]: r["ms"] for r in grid},
                        "acc": check["accuracy"],
                        "base": acc,
                        "diff": check["max_logit_diff"],
                        "note": f"{check['bytes'] / 2**20:.1f} MiB",
                    }
                )
    dense = rows[0]
    print(
        f"## Deployment (trained models, test accuracy; latency: median of {args.repeats} "
        f"forwards of random ids, length {length}, {args.threads} thread(s))\n"
    )
    print(
        "| model | runtime | test acc | vs its PyTorch fp32 | max abs logit diff to it "
        "| b1 ms | b1 vs dense | b32 ms | b32 vs dense | notes |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        diff = f"{r['diff']:.1e}" if "diff" in r else "-"
        print(
            f"| {r['model']} | {r['runtime']} | {100 * r['acc']:.1f} "
            f"| {100 * (r['acc'] - r['base']):+.1f} | {diff} "
            f"| {r['ms'][1]:.1f} | {dense['ms'][1] / r['ms'][1]:.2f}x "
            f"| {r['ms'][32]:.0f} | {dense['ms'][32] / r['ms'][32]:.2f}x | {r.get('note', '')} |"
        )
    print()
    sparse97 = [r for r in rows if r["model"] == "unstructured 97%" and "sparse" in r["runtime"]]
    plain97 = [
        r for r in rows if r["model"] == "unstructured 97%" and r["runtime"] == "PyTorch fp32"
    ]
    if sparse97 and plain97:
        s97, p97 = sparse97[0], plain97[0]
        print(
            f"- goal, unstructured 97% with sparse kernels >= 1.5x dense at batch 32: "
            f"{dense['ms'][32] / s97['ms'][32]:.2f}x dense, {p97['ms'][32] / s97['ms'][32]:.2f}x "
            f"itself with dense kernels; max abs logit diff {s97.get('diff', 0.0):.1e}"
        )
    exported = [r for r in rows if r["runtime"].startswith("ONNX")]
    close = [r for r in exported if abs(r["acc"] - r["base"]) <= 0.01]
    if close:
        best = max(
            close, key=lambda r: min(dense["ms"][1] / r["ms"][1], dense["ms"][32] / r["ms"][32])
        )
        print(
            f"- goal, best export >= 4x dense PyTorch fp32 at batch 1 and 32 within 1 point: "
            f"{best['model']}, {best['runtime']}: {dense['ms'][1] / best['ms'][1]:.2f}x (b1), "
            f"{dense['ms'][32] / best['ms'][32]:.2f}x (b32), accuracy {100 * best['acc']:.1f} "
            f"({100 * (best['acc'] - best['base']):+.1f} vs its PyTorch model, "
            f"{100 * (best['acc'] - dense['acc']):+.1f} vs dense)"
        )
    print()


if __name__ == "__main__":
    main()
