"""The seed's own approach, for ``bench/predict.py``: a transformers ``image-classification`` pipeline with a
ViT-base model, called on one image at a time.

The model has the shape of ``google/vit-base-patch16-224`` (``ViTConfig()``'s defaults: 12 layers, hidden
size 768, 16x16 patches, 224x224 input; 1,000 ImageNet classes; its image processor: resize to 224x224,
mean = std = 0.5) with RANDOM weights, built locally and saved with ``save_pretrained``: speed and memory
are those of the real model, its labels are meaningless. Nothing is fetched from the Hugging Face hub.

    python bench/hf_pipeline_loop.py --make-model DIR          # write the random ViT-base + image processor
    python bench/hf_pipeline_loop.py FOLDER --model DIR --output hf.csv [--timing timing.json] [--threads N]

``--timing`` and ``--max-seconds`` work as in ``bench/naive_loop.py`` (in-process timestamps in seconds
since the script started; ``n`` < ``total`` when the loop stopped early).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

from naive_loop import timed_loop  # noqa: E402  (bench/ is on sys.path when run as a script)

SEED = 0


def make_model(out: Path) -> None:
    """A randomly initialised ViT-base/16 (224) image classifier with ImageNet label names, as a local folder."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from imclass.models.default import imagenet_labels

    labels = list(imagenet_labels())
    config = ViTConfig(num_labels=len(labels), id2label=dict(enumerate(labels)),
                       label2id={name: i for i, name in enumerate(labels)})
    torch.manual_seed(SEED)
    model = ViTForImageClassification(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    ViTImageProcessor().save_pretrained(out)  # google/vit-base-patch16-224's settings are the defaults


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, nargs="?")
    ap.add_argument("--model", type=Path, help="a folder written by --make-model")
    ap.add_argument("--make-model", type=Path, metavar="DIR", help="write the random ViT-base to DIR and exit")
    ap.add_argument("--output", type=Path)
    ap.add_argument("--timing", type=Path)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads(N); default: torch's own (all cores)")
    ap.add_argument("--max-seconds", type=float,
                    help="stop after this long in the loop (the caller extrapolates from the timing file)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only: never reach for the hub
    if args.make_model:
        make_model(args.make_model)
        return
    if args.folder is None or args.model is None or args.output is None:
        ap.error("FOLDER, --model and --output are required (or --make-model DIR)")

    import torch
    from transformers import pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    classify = pipeline("image-classification", model=str(args.model), device="cpu")
    t_ready = time.perf_counter() - T0


    def one(path: Path) -> tuple[str, float]:
        best = classify(str(path))[0]  # the pipeline's default top 5, best first
        return best["label"], best["score"]

    timed_loop(args, one, T0, t_ready)


if __name__ == "__main__":
    main()
