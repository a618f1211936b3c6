#!/usr/bin/env python
"""Turn a pytest-benchmark JSON file into a markdown table and a chart.

    pytest --benchmark --benchmark-json=BENCH.json
    python scripts/bench_report.py BENCH.json [--chart bench.png] [--markdown bench.md]

One row per (group, dtype, batch size): the reference's and numba's iterations per second (OPS,
1 / mean) and median time, and the speedup of numba over the reference (ratio of medians). The
sklearn_fit group (scikit-learn's MLPClassifier fit against fastmlp's) gets a table of its own.
"""

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

GROUP_ORDER = ["forward", "loss_and_grads", "train_step", "epoch", "predict"]


def load(path):
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"bench_report.py: error: {path}: not a readable benchmark JSON ({exc})")
    if "benchmarks" not in data:
        raise SystemExit(f"bench_report.py: error: {path}: no 'benchmarks' list; write it with "
                         f"pytest --benchmark --benchmark-json={path}")
    return data


def table_rows(data):
    cells = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        backend = info.get("backend")
        if backend not in ("reference", "numba", "numba-csr"):
            continue
        key = (b["group"], info.get("dtype"), info.get("batch_size"))
        cells[key][backend] = b["stats"]
        cells[key]["_info_" + backend] = info
    rows = []
    for (group, dtype, batch), c in sorted(
            cells.items(), key=lambda kv: (GROUP_ORDER.index(kv[0][0]) if kv[0][0] in GROUP_ORDER
                                           else 99, kv[0][1] or "", kv[0][2] or 0)):
        ref, jit, csr = c.get("reference"), c.get("numba"), c.get("numba-csr")
        best = csr if csr and (not jit or csr["median"] < jit["median"]) else jit
        rows.append({
            "group": group, "dtype": dtype, "batch": batch,
            "ref_ops": 1 / ref["mean"] if ref else None, "ref_median": ref["median"] if ref else None,
            "jit_ops": 1 / jit["mean"] if jit else None, "jit_median": jit["median"] if jit else None,
            "csr_ops": 1 / csr["mean"] if csr else None, "csr_median": csr["median"] if csr else None,
            "speedup": ref["median"] / best["median"] if ref and best else None,
            "fraction": (c.get("_info_numba-csr") or c.get("_info_numba") or {}).get(
                "fraction_of_matmul_rate"),
        })
    return rows


def sklearn_table(data) -> str:
    """The sklearn_fit group: fits per second of each, and fastmlp's speedup (ratio of medians)."""
    stats = {b["extra_info"].get("backend"): b["stats"] for b in data["benchmarks"]
             if b["group"] == "sklearn_fit" and "extra_info" in b}
    if "sklearn" not in stats or "fastmlp" not in stats:
        return ""
    sk, fm = stats["sklearn"], stats["fastmlp"]
    return ("\n| group | sklearn fits/s | fastmlp fits/s | sklearn median | fastmlp median | "
            "speedup |\n|---|---:|---:|---:|---:|---:|\n"
            f"| sklearn_fit (10,000 MNIST images, 784-100-10, adam, batch 200, 2 epochs) | "
            f"{fmt_ops(1 / sk['mean'])} | {fmt_ops(1 / fm['mean'])} | {fmt_time(sk['median'])} | "
            f"{fmt_time(fm['median'])} | {sk['median'] / fm['median']:.1f}x |\n")


def fmt_time(t):
    if t is None:
        return "-"
    return f"{t * 1e3:.3g} ms" if t >= 1e-3 else f"{t * 1e6:.3g} us"


def fmt_ops(o):
    return "-" if o is None else f"{o:,.4g}"


def markdown(data, rows):
    mi = data.get("machine_info", {})
    env = next((b.get("extra_info", {}) for b in data["benchmarks"]), {})
    head = (f"Benchmarks of {data.get('datetime', '?')[:10]} on {env.get('cpu', mi.get('cpu', {}).get('brand_raw', '?'))}, "
            f"{env.get('cores', '?')} cores, numba threads {env.get('numba_threads', '?')}, BLAS "
            f"threads {env.get('blas_threads', '?')}; float32 matmul rate "
            f"{env.get('matmul_gflops_float32', float('nan')):.0f} GFLOP/s. OPS = iterations per "
            f"second (1 / mean); speedup = reference median / fastest numba median.")
    lines = [head, "",
             "| group | dtype | batch | reference OPS | numba OPS | numba (prepared) OPS | "
             "reference median | numba median | speedup | fraction of matmul rate |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        best_median = min(x for x in (r["jit_median"], r["csr_median"]) if x is not None)
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        fraction = "-" if r["fraction"] is None else f"{100 * r['fraction']:.1f}%"
        lines.append(
            f"| {r['group']} | {r['dtype']} | {r['batch']} | {fmt_ops(r['ref_ops'])} | "
            f"{fmt_ops(r['jit_ops'])} | {fmt_ops(r['csr_ops'])} | {fmt_time(r['ref_median'])} | "
            f"{fmt_time(best_median)} | {speedup} | {fraction} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", type=Path)
    ap.add_argument("--chart", type=Path, default=None, help="PNG chart (default: beside the JSON)")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = ap.parse_args(argv)
    data = load(args.json)
    rows = table_rows(data)
    if not rows:
        raise SystemExit(f"bench_report.py: error: {args.json}: no fastmlp benchmarks in it")
    text = markdown(data, rows) + sklearn_table(data)
    print(text, end="")
    if args.markdown:
        args.markdown.write_text(text)
    from fastmlp import plots
    chart = args.chart or args.json.with_suffix(".png")
    bars = [(f"{r['group']} {r['dtype']} n={r['batch']}", r["ref_ops"],
             max(x for x in (r["jit_ops"], r["csr_ops"]) if x is not None)) for r in rows]
    plots.bench_chart(chart, bars)
    print(f"\nchart: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
