"""Fine-tuning step time on the CPU: plain fp32 NCHW (the anchor: a plain timm-style fp32 loop) against
channels-last, bf16 autocast, both, and torch.compile; then a short accuracy check fp32 vs the fast path.

    python bench/finetune_speed.py                      # steps + accuracy check, prints Markdown
    python bench/finetune_speed.py --no-accuracy --steps 6

Data: flowers5 photos (``$IMCLASS_DATASETS/flowers5/all``; skipped cleanly when absent), Lite0 at 224 (the
embedded default model with a new 5-class head), batch 32, timm's ``default`` augmentation preset. Step time:
one forward + loss + backward + AdamW step on batches decoded and augmented beforehand (data loading is the
same for every variant, so it is kept out), median of ``--steps`` after 3 warm-up steps. Every variant is
measured in the same process, so the ratios against (a) share the machine's load.
Accuracy: ``--epochs`` epochs on a fixed subset (``--train-per-class`` / ``--val-per-class``), same seed, same
batches, fp32 vs the fast path (bf16 autocast + channels-last), validation accuracy in fp32 eval.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
CLASSES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]


def photos(root: Path, per_class: int, offset: int) -> list[tuple[str, int]]:
    rows = []
    for k, c in enumerate(CLASSES):
        files = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        rows += [(str(p), k) for p in files[offset:offset + per_class]]
    return rows


def network(seed: int):
    import torch

    from imclass.classifier import Classifier
    from imclass.training.assemble import with_new_head

    torch.manual_seed(seed)
    base = Classifier.load("default", device="cpu", backend="torch")
    model, _ = with_new_head(base.model, base.spec.architecture, CLASSES)
    return model, base.spec.preprocess


def decoded(rows, transform, seed: int):
    import torch

    from imclass.images import load_image

    torch.manual_seed(seed)
    xs = torch.stack([transform(load_image(p)) for p, _ in rows])
    ys = torch.tensor([k for _, k in rows])
    return xs, ys


def step_fn(model, channels_last: bool, bf16: bool, lr: float = 1e-4, forward=None):
    """One optimiser step of ``model``; ``forward``: what runs the batch (default ``model``; a compiled module)."""
    import torch

    forward = forward or model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step(x, y):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def time_variant(name, channels_last, bf16, compiled, x, y, steps, warm=3, compile_limit=120.0):
    import torch

    model, _ = network(0)
    model.train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = model
    if compiled:
        fwd = torch.compile(model)
    step = step_fn(model, channels_last, bf16, forward=fwd)  # fwd: the compiled module when compiled
    times = []
    t_start = time.perf_counter()
    for i in range(warm + steps):
        t0 = time.perf_counter()
        step(x, y)
        times.append(time.perf_counter() - t0)
        print(f"  {name} step {i + 1}: {times[-1]:.2f} s", flush=True)
        if compiled and i == 0 and times[0] > compile_limit:
            return {"variant": name, "skipped": f"first step {times[0]:.0f} s (> {compile_limit:.0f} s)"}
    return {"variant": name, "median_s": statistics.median(times[warm:]), "first_s": times[0],
            "total_s": time.perf_counter() - t_start}


def accuracy_check(root: Path, epochs: int, per_train: int, per_val: int, batch: int, fast: tuple[bool, bool]):
    import torch

    from imclass.training.finetune import train_transform

    _, pre = network(0)
    tr = photos(root, per_train, 0)
    va = photos(root, per_val, per_train)
    aug = train_transform(pre, "default")
    ev = train_transform(pre, "none")
    xv, yv = decoded(va, ev, 0)
    epoch_batches = []
    for e in range(epochs):  # the same augmented batches for both runs
        g = torch.Generator().manual_seed(100 + e)
        order = torch.randperm(len(tr), generator=g).tolist()
        xs, ys = decoded([tr[i] for i in order], aug, 100 + e)
        epoch_batches.append([(xs[i:i + batch], ys[i:i + batch]) for i in range(0, len(xs), batch)])
    out = {}
    for name, (cl, bf) in (("fp32 NCHW", (False, False)), ("fast", fast)):
        model, _ = network(0)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        step = step_fn(model, cl, bf, lr=1e-3)  # imclass's fine-tuning LR
        secs = []
        for e in range(epochs):
            model.train()
            t0 = time.perf_counter()
            for x, y in epoch_batches[e]:
                step(x, y)
            secs.append(time.perf_counter() - t0)
        model.eval()
        with torch.no_grad():
            xv_ = xv.contiguous(memory_format=torch.channels_last) if cl else xv
            pred = torch.cat([model(xv_[i:i + 64]).argmax(1) for i in range(0, len(xv_), 64)])
        out[name] = {"val_accuracy": float((pred == yv).float().mean()), "epoch_s": secs}
    return out


def loop_check(root: Path, epochs: int, per_train: int, per_val: int, batch: int) -> dict:
    """imclass's own fine-tuning loop (data loading, freeze epoch, validation pass included): epoch times with
    ``precision="fp32"`` (before: fp32 channels-last) and ``"auto"`` (bf16 autocast here)."""
    import csv
    import tempfile

    from imclass.data import load_dataset
    from imclass.training.config import TrainConfig
    from imclass.training.finetune import train_network

    tmp = Path(tempfile.mkdtemp(prefix="ft-speed-"))
    with open(tmp / "rows.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for split, rows in (("train", photos(root, per_train, 0)), ("val", photos(root, per_val, per_train))):
            w.writerows((p, CLASSES[k], split) for p, k in rows)
    ds = load_dataset(tmp / "rows.csv")
    out = {}
    for precision in ("fp32", "auto"):
        stamps = [time.perf_counter()]
        cfg = TrainConfig(mode="finetune", epochs=epochs, batch_size=batch, precision=precision, seed=0)
        t = train_network(ds, cfg, False, out=tmp / precision,
                          on_epoch=lambda r, s=stamps: s.append(time.perf_counter()))
        out[precision] = {"epoch_s": [b - a for a, b in itertools.pairwise(stamps[1:])],
                          "val_accuracy": [h.get("val_accuracy") for h in t.history],
                          "used": t.details["train_precision"]}
    return out


def compiled(args) -> dict:
    """The torch.compile variant in a child process, stopped after ``--compile-limit`` + the steps."""
    import subprocess

    name = "(e) torch.compile + bf16 + channels-last"
    cmd = [sys.executable, __file__, "--compile-only", "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--batch", str(args.batch), "--compile-limit", str(args.compile_limit)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.compile_limit + 60)
    except subprocess.TimeoutExpired:
        return {"variant": name, "skipped": f"did not finish within {args.compile_limit + 60:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"variant": name, "skipped": (done.stderr.strip().splitlines() or ["failed"])[-1][:100]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-limit", type=float, default=150.0, help="seconds the compiled variant may take")
    ap.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--loop", action="store_true", help="also time imclass's own loop, fp32 vs auto")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-per-class", type=int, default=40)
    ap.add_argument("--val-per-class", type=int, default=20)
    args = ap.parse_args()
    root = DATASETS / "flowers5" / "all"
    if not root.is_dir():
        print(f"skipped: {root} not found (set IMCLASS_DATASETS)")
        return 0
    import torch

    from imclass.training.finetune import train_transform
    from imclass.training.precision import bf16_supported

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads "
          f"{torch.get_num_threads()}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {bf16_supported()}, load {os.getloadavg()[0]:.2f}", flush=True)
    _, pre = network(0)
    x, y = decoded(photos(root, (args.batch + 4) // 5, 0)[:args.batch], train_transform(pre, "default"), 0)
    if args.compile_only:  # in a child process, so that a compile that never ends can be stopped
        print("RESULT " + json.dumps(time_variant("(e) torch.compile + bf16 + channels-last", True, True, True, x, y,
                                                  args.steps, args.warmup, args.compile_limit)), flush=True)
        return 0
    variants = [("(a) fp32 NCHW (anchor)", False, False, False), ("(b) fp32 channels-last", True, False, False),
                ("(c) bf16 autocast NCHW", False, True, False),
                ("(d) bf16 autocast + channels-last", True, True, False)]
    rows = []
    for name, cl, bf, comp in variants:
        try:
            r = time_variant(name, cl, bf, comp, x, y, args.steps, args.warmup)
        except Exception as exc:  # a variant that fails (compile) is reported, not fatal
            r = {"variant": name, "skipped": f"{type(exc).__name__}: {str(exc)[:80]}"}
        rows.append(r)
        print(r, flush=True)
    if not args.no_compile:
        rows.append(compiled(args))
        print(rows[-1], flush=True)
    anchor = rows[0]["median_s"]
    print("\n| variant | step (s, median) | images/s | speed-up vs (a) |\n|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['variant']} | skipped: {r['skipped']} | | |")
        else:
            print(f"| {r['variant']} | {r['median_s']:.3f} | {args.batch / r['median_s']:.1f} | "
                  f"{anchor / r['median_s']:.2f}x |")
    if not args.no_accuracy:
        acc = accuracy_check(root, args.epochs, args.train_per_class, args.val_per_class, args.batch, (True, True))
        print(f"\naccuracy check ({args.epochs} epochs, {args.train_per_class}/class train, "
              f"{args.val_per_class}/class val, same batches):")
        print("| run | val accuracy | epoch times (s) |\n|---|---|---|")
        for k, v in acc.items():
            print(f"| {k} | {v['val_accuracy']:.3f} | {', '.join(f'{s:.1f}' for s in v['epoch_s'])} |")
    if args.loop:
        got = loop_check(root, args.epochs, args.train_per_class, args.val_per_class, args.batch)
        print(f"\nimclass's loop ({args.epochs} epochs, epoch 1 head only; epoch times from epoch 2, validation "
              "pass included):")
        print("| precision | used | epoch times (s) | val accuracy per epoch |\n|---|---|---|---|")
        for k, v in got.items():
            print(f"| {k} | {v['used']} | {', '.join(f'{s:.1f}' for s in v['epoch_s'])} | {v['val_accuracy']} |")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
