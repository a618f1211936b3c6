"""pytest configuration shared by tests/ and benchmarks/.

``pytest`` runs the tests in tests/ only. ``pytest --benchmark`` runs the benchmark suites in
benchmarks/ instead (so do pytest-benchmark's own flags --benchmark-only, --benchmark-json,
--benchmark-autosave, --benchmark-save and --benchmark-compare, and naming benchmarks/ on the
command line).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
_BENCH_OPTIONS = ("benchmark_only", "benchmark_json", "benchmark_autosave", "benchmark_save",
                  "benchmark_compare")


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run the benchmark suites in benchmarks/ (iterations per second, "
                          "reference vs numba) instead of the tests")


def _benchmark_mode(config) -> bool:
    if config.getoption("--benchmark"):
        return True
    if any(config.getoption(name, default=None) for name in _BENCH_OPTIONS):
        return True
    return any("benchmarks" in Path(str(a).split("::")[0]).parts for a in _explicit_args(config))


def _explicit_args(config):
    """The paths named on the command line (not the testpaths default)."""
    return list(config.option.file_or_dir or [])


def pytest_configure(config):
    """In benchmark mode with no paths named, collect benchmarks/ instead of the testpaths."""
    if _benchmark_mode(config) and not _explicit_args(config):
        config.args[:] = [str(ROOT / "benchmarks")]
