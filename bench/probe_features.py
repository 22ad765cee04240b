"""Which features pay for the probe? Lite0 / Lite1 / Lite2 embeddings, augmented views, two backbones concatenated.

    python bench/probe_features.py                          # the three shared sets, a fresh embedding cache
    python bench/probe_features.py --only flowers5 --limit 2000

Per shared set, on the validation split ``imclass train`` uses (the set's own, or 20% stratified, seed 0): the time
to embed every image with each backbone and view (cold cache: ``bench/out/probe_features/cache``), and the
validation accuracy (mAP for multi-label) of the probe's logistic head (C chosen on validation log loss) on:

- ``B`` the backbone's embeddings (today's probe with ``--model B``);
- ``B +flip`` / ``+flip+zoom``: the training rows also as their mirrored (and enlarged-centre) views; validation
  on the plain embeddings, exactly what the bundle sees when it predicts;
- ``B TTA``: validation embeddings averaged over the views too (needs a network that averages at prediction);
- ``B1|B2``: the two backbones' embeddings side by side, each on its own input (``B1+B2`` as a backbone name is
  the network imclass builds: both parts on the larger input).

Prints a Markdown table (``--record`` appends it to ``bench/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "probe_features"
RESULTS = ROOT / "bench" / "RESULTS.md"
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
SETS = {"flowers5": ("flowers5/all", None), "neu_steel_defects": ("neu_steel_defects", None),
        "natural_scenes_multilabel": ("natural_scenes_multilabel/labels.csv", True)}


def metric(head, x, y, multi: bool) -> float:
    from imclass.evaluation.metrics import compute_metrics

    z = head.logits(x)
    if multi:
        p = 1 / (1 + np.exp(-z))
        return float(compute_metrics(y, p, [str(i) for i in range(y.shape[1])], "multi_label")["mAP"])
    return float((z.argmax(1) == y).mean())


def main() -> None:
    from imclass.data import load_dataset
    from imclass.features import Embedder, EmbeddingCache
    from imclass.features.embed import embed_dataset
    from imclass.features.head import fit_head
    from imclass.training.validation import with_validation

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="")
    ap.add_argument("--limit", type=int, default=0, help="at most this many images per set (stratified by order)")
    ap.add_argument("--backbones", default="default,lite2")
    ap.add_argument("--cache", type=Path, default=OUT / "cache" / "embeddings.sqlite3",
                    help="embedding cache file (default: a fresh one under bench/out/probe_features)")
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache(a.cache)
    backbones = a.backbones.split(",")
    rows = []
    for name, (rel, multi) in SETS.items():
        if a.only and name not in a.only.split(","):
            continue
        ds = load_dataset(str(DATASETS / rel), multi_label=multi).readable()
        if a.limit and len(ds) > a.limit:
            ds = ds.with_table(ds.table.sample(a.limit, random_state=0).sort_index().reset_index(drop=True))
        ds, _ = with_validation(ds, 0.2, 0)
        split = ds.table["split"].to_numpy()
        y = ds.targets()
        feats, secs = {}, {}
        for b in backbones:
            for view in ("", "flip", "zoom"):
                if view == "zoom" and b != backbones[0]:
                    continue
                t0 = time.perf_counter()
                emb = embed_dataset(ds, Embedder(b, cache=cache, view=view))
                secs[(b, view)] = time.perf_counter() - t0
                feats[(b, view)] = emb.vectors
                print(f"{name}: {b} {view or 'plain'} {secs[(b, view)]:.1f}s ({emb.computed} computed)", flush=True)
        tr, va = split == "train", split == "val"
        kw = dict(num_classes=len(ds.classes), multi_label=ds.multi_label)

        def probe(label: str, xtr, ytr, xva, seconds: float, *, name=name, y=y, va=va, kw=kw, ds=ds) -> None:
            t0 = time.perf_counter()
            head = fit_head(xtr, ytr, xva, y[va], **kw)
            fit = time.perf_counter() - t0
            rows.append([name, label, f"{metric(head, xva, y[va], ds.multi_label):.4f}", f"{seconds:.0f}",
                         f"{fit:.1f}"])
            print(" | ".join(rows[-1]), flush=True)

        for b in backbones:
            x = feats[(b, "")]
            probe(b, x[tr], y[tr], x[va], secs[(b, "")])
            xf = feats[(b, "flip")]
            probe(f"{b} +flip", np.concatenate([x[tr], xf[tr]]), np.concatenate([y[tr], y[tr]]), x[va],
                  secs[(b, "")] + secs[(b, "flip")])
            probe(f"{b} TTA flip (averaged, train and val)", ((x + xf) / 2)[tr], y[tr], ((x + xf) / 2)[va],
                  secs[(b, "")] + secs[(b, "flip")])
            if (b, "zoom") in feats:
                xz = feats[(b, "zoom")]
                probe(f"{b} +flip+zoom", np.concatenate([x[tr], xf[tr], xz[tr]]), np.concatenate([y[tr]] * 3),
                      x[va], secs[(b, "")] + secs[(b, "flip")] + secs[(b, "zoom")])
        if len(backbones) > 1:
            b1, b2 = backbones[:2]
            x = np.concatenate([feats[(b1, "")], feats[(b2, "")]], axis=1)
            probe(f"{b1}|{b2} concatenated", x[tr], y[tr], x[va], secs[(b1, "")] + secs[(b2, "")])
        rows.append([name, f"({int(tr.sum())} train, {int(va.sum())} val images)", "", "", ""])
    table = ["| set | features | val accuracy (mAP) | embedding s (cold) | head fit s |", "|---|---|---|---|---|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    text = (f"## {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: probe features (bench/probe_features.py)\n\n"
            f"`python bench/probe_features.py {' '.join(os.sys.argv[1:])}`, {os.cpu_count()} cores, load "
            f"{os.getloadavg()[0]:.1f} at the end.\n\n" + "\n".join(table) + "\n")
    print(text)
    if a.record:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
