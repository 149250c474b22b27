"""The console script."""

import pytest

from sae_bench.cli import main
from sae_bench.engine.transfer_report import TransferReport


def test_metrics_lists_every_metric_of_every_group_with_its_definition(capsys):
    from sae_bench.cases.registry import METRIC_GROUPS

    assert main(["metrics"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for group, names in METRIC_GROUPS.items():
        assert f"[{group}]" in lines
        for name in names:
            [line] = [line for line in lines if line.split()[:1] == [name]]
            assert len(line.split()) > 3, f"{name} has no definition"
    for name in TransferReport.metric_docs():
        assert any(line.split()[:1] == [name] for line in lines) or name.startswith("n_")


def test_metrics_lists_each_definitions_version_and_what_earlier_ones_said(capsys):
    from sae_bench.engine.definitions import DEFINITIONS

    assert main(["metrics"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, entry in DEFINITIONS.items():
        [line] = [line for line in lines if line.split()[:1] == [name]]
        assert line.split()[1] == f"v{entry.version}", name
    [drift] = [i for i, line in enumerate(lines) if line.split()[:1] == ["weight_drift"]]
    assert lines[drift + 1].strip().startswith("(v1: ")


def test_versions_names_the_libraries(capsys):
    assert main(["versions"]) == 0
    assert "sae-lens 6.54" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2


def test_zoo_list_names_every_model_and_sae_as_a_loadable_spec(capsys):
    from sae_bench.sources.zoo.recipes import model_names, sae_names

    assert main(["zoo", "list"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed == [f"zoo:{name}" for name in model_names() + sae_names()]
    assert "zoo:tiny-mistral/dose-400" in listed and "zoo:tiny-qwen2/base-sae-ft" in listed


def test_published_expectations_are_what_is_committed(tmp_path):
    """The hub expectation files are exactly what `sae-bench expectations published` writes from references/."""
    from pathlib import Path

    assert main(["expectations", "published", "--root", str(tmp_path)]) == 0
    committed = Path(__file__).parents[1] / "expectations"
    written = sorted(tmp_path.rglob("*.json"))
    assert written
    for path in written:
        assert path.read_text() == (committed / path.relative_to(tmp_path)).read_text(), path


def test_cases_lists_a_sweeps_expanded_cases(capsys):
    assert main(["cases", "--sweep", "release-a", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    rows = captured.out.strip().splitlines()[1:]
    assert len(rows) == 16 and "16 cases" in captured.err
    assert "tiny-mistral/release-a-pt/layer_3@instruct,zoo:tiny-mistral/release-a-pt/layer_3," in captured.out
    assert main(["cases", "--sweep", "release-z"]) == 2
    assert "no sweep 'release-z'; the sweeps: gemma-3-1b/res-all," in capsys.readouterr().err
    assert main(["cases", "--sweep", "res-all"]) == 2  # two families declare it
    assert "--sweep gemma-3-1b/res-all or --sweep gemma-3-270m/res-all" in capsys.readouterr().err


@pytest.mark.full
def test_run_is_the_suite_with_the_suites_exit_codes(capsys):
    """`sae-bench run ARGS` is `pytest benchmarks ARGS`: 0 when the selection holds, 2 when it selects nothing."""
    assert main(["run", "--case-id", "tiny-qwen2/base-sae@chat", "-k", "kl", "--no-results", "-q"]) == 0
    assert main(["run", "-k", "no-such-case-anywhere", "--no-results", "-q"]) == 2
    assert "no test selected" in capsys.readouterr().err
