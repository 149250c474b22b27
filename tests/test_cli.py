"""The console script."""

import pytest

from sae_bench.cli import main
from sae_bench.results import TransferReport


def test_metrics_lists_every_reported_metric(capsys):
    assert main(["metrics"]) == 0
    out = capsys.readouterr().out
    for name in TransferReport.metric_docs():
        assert name in out
    assert "ce_loss_recovered" in out and "pooled means" in out


def test_versions_names_the_libraries(capsys):
    assert main(["versions"]) == 0
    assert "sae-lens 6.54" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
