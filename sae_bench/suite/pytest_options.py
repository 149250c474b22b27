"""The suite's pytest options and markers, in one place: the repository's conftest.py imports `pytest_addoption`;
an installed suite (`sae-bench run`, the gate) loads this module with `-p sae_bench.suite.pytest_options`."""

from sae_bench.option_values import gigabytes

MARKERS = (
    "zoo: runs on the shipped zoo models (everywhere, CI included)",
    "hub: needs models or SAEs from a hub (skips offline with the reason)",
    "gpu: needs a CUDA device",
    "slow: takes more than a few seconds",
)


def pytest_addoption(parser):
    group = parser.getgroup("sae_bench")
    group.addoption("--device", default="cpu", help="torch device the models and SAEs run on (default: cpu)")
    from sae_bench.engine.backends import BACKENDS, DEFAULT_BACKEND  # TransformerLens: after the rehearsal's set-up

    group.addoption(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help="how models run: TransformerLens's TransformerBridge over the HF model (bridge, the default) or its "
        "deprecated HookedTransformer (hooked); README: Model backends",
    )
    group.addoption(
        "--device-memory",
        type=gigabytes,
        metavar="GB",
        help="memory a shared pass may fill, in GB (default: the device's): the SAEs of a pass that would not fit "
        "are split over passes, as `sae-bench plan --gpu-memory` plans them",
    )
    group.addoption(
        "--update-expectations",
        action="store_true",
        help="rewrite the measured values of the selected cases' expectation files (tolerances are kept) and "
        "print the diff",
    )
    group.addoption(
        "--replace-published",
        action="store_true",
        help="with --update-expectations: replace published values too (each keeps the value and source it "
        "replaced); without it a measured run never overwrites a paper's number",
    )
    group.addoption(
        "--expectations-dir",
        metavar="DIR",
        help="read (and, when asked, write) expectation files here instead of the suite's expectations/",
    )
    group.addoption(
        "--results",
        metavar="PATH|URL",
        help="record what this run measures in this SQLite file or postgresql:// store (default: "
        "$SAE_BENCH_RESULTS, else .sae-bench/results.sqlite)",
    )
    group.addoption("--no-results", action="store_true", help="record nothing in the results database")
    group.addoption(
        "--sae", dest="sae_override", metavar="SPEC", help="run every selected case with this SAE instead of its own"
    )
    group.addoption(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="measure on a Ray cluster (its address, e.g. ray://head:10001 or auto); alone, a local Ray on 127.0.0.1",
    )
    group.addoption(
        "--sae-cases",
        dest="sae_cases",
        metavar="EXPR",
        help="with --sae: replace the SAE only in the cases this -k expression selects an item (CASE:GROUP) of "
        "('@' allowed), so a claim relates the new SAE to the other cases as they are",
    )
    group.addoption(
        "--cases-dir",
        dest="cases_dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of your own case files (*.toml), added to the shipped ones (repeatable); its expectation "
        "files live in its expectations/ subfolder",
    )
    group.addoption(
        "--strict-expectations",
        action="store_true",
        help="an expectation file that no registered case reads is an error, not a warning (CI uses this)",
    )
    group.addoption(
        "--case-id",
        action="append",
        default=[],
        metavar="ID",
        help="run only this case (repeatable); ids contain '@', which -k does not accept",
    )
    group.addoption(
        "--verdict-table", metavar="FILE", help="write every checked metric's verdict to FILE (.md or .csv)"
    )


def pytest_configure(config):
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
