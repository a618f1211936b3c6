#!/usr/bin/env python
"""Write docs/benchmarks.md whole: date, commit and machine at the top, then the tables of
scripts/bench_numba.py (one per instruction set asked for) and of the pytest-benchmark suites
(through scripts/bench_report.py, with its chart docs/bench.png), and fastmlp.MLPClassifier
against scikit-learn's (benchmarks/bench_sklearn.py). The page is never edited by hand: run
this again when the kernels change.

    python scripts/bench_docs.py                       # this CPU, both reports
    python scripts/bench_docs.py --cpu host --cpu haswell    # also the AVX2 code on an AVX-512 CPU
    python scripts/bench_docs.py --skip-pytest --repeats 11  # bench_numba.py only, more pairs

Each --cpu other than "host" runs bench_numba.py with NUMBA_CPU_NAME set and a Numba cache of its
own, so Numba compiles the kernels for that CPU (e.g. haswell or znver3: AVX2, no AVX-512). For a
CPU without AVX-512 it also sets NUMBA_CPU_FEATURES: the host's features with AVX-512's turned
off, since Numba's JIT passes the host's features to LLVM whatever the CPU name, and the name
alone would still compile AVX-512 code on an AVX-512 host.
Needs FASTMLP_DATA (or the data in the user cache), like the benchmarks themselves.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def run(cmd, env=None):
    print("$", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    r = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
        raise SystemExit(f"bench_docs.py: error: {cmd[1] if len(cmd) > 1 else cmd[0]} failed "
                         f"(exit {r.returncode})")
    return r.stdout


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!docs/benchmarks.md", ":!docs/bench.png"],   # (its own)
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


# x86-64 CPUs (LLVM's names) with AVX2 and no AVX-512: the code paths of the AVX2 machines
AVX2_CPUS = {"haswell", "broadwell", "skylake", "alderlake", "znver1", "znver2", "znver3"}


def llvm_host_features() -> str:
    from llvmlite import binding
    return binding.get_host_cpu_features().flatten()


def without_avx512(features: str) -> str:
    """An LLVM feature string (+a,-b,...) with every AVX-512 feature turned off."""
    return ",".join("-" + f[1:] if f[1:].startswith("avx512") else f
                    for f in features.split(",") if f)


def demote(markdown: str) -> str:
    """bench_numba.py's '# ' title becomes a '### ' heading inside this page."""
    return "\n".join("##" + line if line.startswith("# ") else line
                     for line in markdown.strip().splitlines())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="append", default=None, metavar="NAME",
                    help="a CPU to compile for (host, haswell, znver3, znver4, ...); repeatable "
                         "(default: host)")
    ap.add_argument("--repeats", type=int, default=7, help="bench_numba.py --repeats (default 7)")
    ap.add_argument("--skip-pytest", action="store_true",
                    help="leave out the pytest-benchmark suites (they take a few minutes)")
    ap.add_argument("--sklearn-pairs", type=int, default=3,
                    help="bench_sklearn.py --pairs (default 3; 0 leaves it out)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"argument --repeats: must be an integer >= 1; got {args.repeats}")

    from bench_support import environment, header_line
    sections = []
    for cpu in args.cpu or ["host"]:
        env = dict(os.environ)
        cache = None
        if cpu != "host":
            cache = tempfile.TemporaryDirectory(prefix=f"numba-{cpu}-")
            env.update(NUMBA_CPU_NAME=cpu, NUMBA_CACHE_DIR=cache.name)
            if cpu in AVX2_CPUS:
                env["NUMBA_CPU_FEATURES"] = without_avx512(llvm_host_features())
        out = run([sys.executable, ROOT / "scripts" / "bench_numba.py", "--repeats",
                   str(args.repeats)], env)
        title = "this CPU" if cpu == "host" else f"compiled for {cpu} (NUMBA_CPU_NAME={cpu})"
        flag = "" if cpu == "host" else f"NUMBA_CPU_NAME={cpu} NUMBA_CACHE_DIR=<empty dir> " + (
            "NUMBA_CPU_FEATURES=<the host's, without AVX-512> " if cpu in AVX2_CPUS else "")
        sections.append(f"## numba vs reference, {title}\n\n"
                        f"    {flag}python scripts/bench_numba.py --repeats {args.repeats}\n\n"
                        + demote(out) + "\n")
        if cache is not None:
            cache.cleanup()
    if not args.skip_pytest:
        with tempfile.TemporaryDirectory() as d:
            js = Path(d) / "bench.json"
            run([sys.executable, "-m", "pytest", "--benchmark", f"--benchmark-json={js}", "-q"])
            table = run([sys.executable, ROOT / "scripts" / "bench_report.py", js, "--chart",
                         ROOT / "docs" / "bench.png"])
        table = table.split("\nchart:")[0].strip()
        sections.append("## The pytest-benchmark suites\n\n"
                        "    pytest --benchmark --benchmark-json=bench.json\n"
                        "    python scripts/bench_report.py bench.json --chart docs/bench.png\n\n"
                        + table + "\n\n![operations per second, reference vs numba](bench.png)\n")
    if args.sklearn_pairs > 0:
        out = run([sys.executable, ROOT / "benchmarks" / "bench_sklearn.py", "--pairs",
                   str(args.sklearn_pairs)])
        sections.append("## fastmlp.MLPClassifier vs scikit-learn's MLPClassifier\n\n"
                        f"    python benchmarks/bench_sklearn.py --pairs {args.sklearn_pairs}\n\n"
                        "Whole fits with the same hyperparameters (hidden_layer_sizes=(100,), "
                        "adam, batch 200, alpha 1e-4, learning_rate_init 1e-3, random_state 0, "
                        "no early stop), fastmlp and sklearn alternating; the data are described "
                        "in the script's docstring.\n\n" + out.strip() + "\n")
    text = (f"# Benchmarks\n\nGenerated by `python scripts/bench_docs.py"
            f"{''.join(f' --cpu {c}' for c in args.cpu or [])}"
            f"{' --skip-pytest' if args.skip_pytest else ''}"
            f"{f' --repeats {args.repeats}' if args.repeats != 7 else ''}"
            f"{f' --sklearn-pairs {args.sklearn_pairs}' if args.sklearn_pairs != 3 else ''}` on "
            f"{time.strftime('%Y-%m-%d')}, commit {commit()}; do not edit by hand.\n\n"
            f"Machine: {header_line(environment())}.\n\n"
            "Times are medians; a ratio is the median of alternating pairs (reference, numba, "
            "reference, ...), so that both sides of a pair see the same state of a shared, "
            "noisy machine. \"Fraction of matmul rate\" counts the dense-equivalent FLOPs "
            "(what dense BLAS would have to do) against this machine's float32 matrix-product "
            "rate measured in the same run: over 100% means faster than dense BLAS could be. "
            "How the kernels get there: [performance.md](performance.md).\n\n"
            + "\n".join(sections))
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
