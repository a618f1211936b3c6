#!/usr/bin/env python
"""Run the main job over several seeds and summarise: test accuracy (mean, min, max) and times.

    python scripts/seeds_report.py --seeds 5 [any train_fast.py options, e.g. --augment]

Each seed is a separate `train_fast.py --seed S --quiet --metrics-json ...` process, so data
loading and the (cached) kernel start-up are measured as a user meets them.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main(argv):
    seeds = 5
    if argv[:1] == ["--seeds"]:
        seeds, argv = int(argv[1]), argv[2:]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for s in range(seeds):
            out = Path(d) / f"seed{s}.json"
            r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_fast.py"), "--seed",
                                str(s), "--quiet", "--metrics-json", str(out), *argv],
                               capture_output=True, text=True)
            if r.returncode:
                print(r.stderr, file=sys.stderr)
                return r.returncode
            print(r.stdout.strip())
            rows.append(json.loads(out.read_text()))
    acc = np.array([m["test_accuracy"] for m in rows]) * 100
    train = np.array([m["train_seconds"] for m in rows])
    start = np.array([m["startup_seconds"] for m in rows])
    load = np.array([m["load_seconds"] for m in rows])
    m = rows[0]
    print()
    print("| recipe | seeds | test accuracy mean | min | max | training time (median) | "
          "start-up (median) | data loading (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    recipe = (f"{m['dataset']}, {m['backend']} {m['dtype']}, {m['optimizer']} lr {m['lr']:g}, "
              f"{m['epochs'] or m['iterations']} {'epochs' if m['epochs'] else 'iterations'}"
              f"{', batch ' + str(m['batch_size']) if m['batch_size'] else ''}"
              f"{', augment' if m.get('augment') else ''}")
    print(f"| {recipe} | {seeds} | {acc.mean():.2f}% | {acc.min():.2f}% | {acc.max():.2f}% | "
          f"{np.median(train):.2f} s | {np.median(start):.2f} s | {np.median(load):.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
