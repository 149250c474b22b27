"""The suite's pytest options: the repository's conftest.py imports `pytest_addoption`; an installed suite
(`sae-bench run`, the gate) loads this module with `-p sae_bench.suite.pytest_options`. The options the command line
shares are declared once, in `sae_bench.options`; the markers in pyproject.toml (the installed suite's pytest.ini is
written from it)."""

from sae_bench.options import EXPLAIN, SAE, SUITE_RUN, add_options


def pytest_addoption(parser):
    group = parser.getgroup("sae_bench")
    group.addoption("--device", default="cpu", help="torch device the models and SAEs run on (default: cpu)")
    from sae_bench.engine.backends import BACKENDS, DEFAULT_BACKEND  # noqa: PLC0415 - TransformerLens: after the rehearsal's set-up

    group.addoption(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help="how models run: TransformerLens's TransformerBridge over the HF model (bridge, the default) or its "
        "deprecated HookedTransformer (hooked); docs/performance.md: Model backends",
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
    add_options(group.addoption, (SAE, *SUITE_RUN, EXPLAIN))
    group.addoption(
        "--sae-cases",
        dest="sae_cases",
        metavar="EXPR",
        help="with --sae: replace the SAE only in the cases this -k expression selects an item (CASE:GROUP) of "
        "('@' allowed), so a claim relates the new SAE to the other cases as they are",
    )
    group.addoption(
        "--strict-expectations",
        action="store_true",
        help="an expectation file that no registered case reads, or an expected value measured under another "
        "definition of its metric (stale), is an error, not a warning (CI uses this)",
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
