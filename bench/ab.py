"""Interleaved A/B runs of ``imclass predict`` variants as whole processes, to settle a default.

    python bench/ab.py --n 1000 --rounds 3 "" "-b 32"                       # torch backend, batch 16 vs 32
    python bench/ab.py --rounds 3 "--backend auto" "--backend auto -w 1"   # ONNX Runtime, decode threads 2 vs 1

Each variant is a ``bench/predict.py`` variant of (b) (``--backend torch`` unless it names a backend;
leading ``VAR=VALUE`` words set the environment). Rounds alternate the order of the variants, so drifting
machine load spreads over all of them; the wall times of every round are printed, so that a run hit by a
load spike can be told apart. Uses the cached test set of ``bench/predict.py --n N``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import predict as P


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help='imclass predict options per variant ("" = the defaults)')
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    folder = P.build_testset(args.n)
    work = P.OUT / "ab"
    work.mkdir(parents=True, exist_ok=True)
    cases = [P.parse_variant(v) if v.strip() else P.Case("(b) defaults", list(P.TORCH)) for v in args.variants]
    walls: list[list[float]] = [[] for _ in cases]
    print(f"{args.n} photos, {args.rounds} rounds; {P.versions()}", flush=True)
    for r in range(args.rounds):
        order = list(range(len(cases)))
        for i in order if r % 2 == 0 else order[::-1]:
            out = work / f"{i}.csv"
            out.unlink(missing_ok=True)
            wall, rss, _ = P.run_process(cases[i].command(folder, out, work / "timing.json", None),
                                         work / f"{i}.log", env=cases[i].env)
            walls[i].append(wall)
            print(f"  round {r}: {cases[i].display():<90} {wall:6.1f}s {rss:5.0f} MiB "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    print()
    base = statistics.median(walls[0])
    for case, w in zip(cases, walls):
        med = statistics.median(w)
        print(f"{case.display():<90} median {med:6.1f}s  {base / med:5.2f}x of the first  "
              f"rounds {', '.join(f'{x:.1f}' for x in w)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
