"""The paired release gate: its statistics against plain references, and on the zoo's two releases of one recipe
(the second passes, a perturbed copy fails)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from sae_bench.cases.registry import SHIPPED_CASES, load_registry
from sae_bench.cli import main as cli
from sae_bench.engine.latent_matching import MATCH_THRESHOLD, live_latents
from sae_bench.gates.release import holm, judge, paired_release_gate, sweep_plan


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12), st.floats(0.001, 0.2))
def test_holm_rejects_exactly_the_step_down_prefix(p_values, alpha):
    rejected = holm(p_values, alpha)
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    expected, stopped = [False] * len(p_values), False
    for rank, index in enumerate(order):  # plain loop: reject while p_(k) <= alpha / (m - k)
        stopped = stopped or p_values[index] > alpha / (len(p_values) - rank)
        expected[index] = not stopped
    assert rejected == expected


@given(
    st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=3, max_size=30),
    st.floats(0.001, 0.5),
    st.sampled_from(["lower", "higher"]),
)
def test_judge_is_the_one_sided_t_test_of_the_margin(differences, margin, better):
    mean, p_regression, p_ok = judge(differences, margin, better)
    worse = [d if better == "lower" else -d for d in differences]
    n, m = len(worse), sum(worse) / len(worse)
    assert mean == pytest.approx(sum(differences) / n)
    sd = math.sqrt(sum((w - m) ** 2 for w in worse) / (n - 1))
    if sd > 0:
        t = (m - margin) / (sd / math.sqrt(n))
        assert p_regression == pytest.approx(stats.t.sf(t, n - 1))
        assert p_ok == pytest.approx(stats.t.cdf(t, n - 1))
        assert p_regression + p_ok == pytest.approx(1.0)


@pytest.fixture(scope="module")
def plan():
    return sweep_plan(load_registry(SHIPPED_CASES), "release-a")


@pytest.mark.full
def test_the_same_recipe_with_other_seeds_passes(plan):
    """False alarms: release B (release A's recipe, other seeds) against release A is not worse by the margins."""
    verdicts = paired_release_gate(plan, "zoo:tiny-mistral/release-b-pt", "zoo:tiny-mistral/release-a-pt")
    assert not verdicts.added and not verdicts.removed
    assert set(verdicts.table.verdict) == {"ok"}, verdicts.table.to_string()
    assert len(verdicts.table) == 4 * 2 * 3  # layers × models × judged metrics


def test_a_perturbed_release_fails_with_a_forest_plot(tmp_path, capsys):
    """Noise on the decoder of every SAE: the gate calls regressions, exit 1, and draws each interval."""
    from sae_bench.sources.loading import load_sae
    from sae_bench.sources.zoo.recipes import release_ids

    for sae_id in release_ids("tiny-mistral", "release-a-pt"):
        sae = load_sae(f"zoo:tiny-mistral/release-a-pt/{sae_id}")
        with torch.no_grad():
            noise = torch.randn(sae.W_dec.shape, generator=torch.Generator().manual_seed(0))
            sae.W_dec.add_(0.5 * sae.W_dec.norm(dim=-1, keepdim=True) * noise / noise.norm(dim=-1, keepdim=True))
        sae.save_model(tmp_path / "perturbed" / sae_id)
    code = cli(
        ["gate", "--release", str(tmp_path / "perturbed"), "--baseline", "zoo:tiny-mistral/release-a-pt",
         "--sweep", "release-a", "--report", str(tmp_path / "report"), "--budget-rows", "32"]
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 1, out.out[-3000:] + out.err[-2000:]
    assert "regression" in out.out and (tmp_path / "report" / "forest.png").is_file()


def test_a_release_gate_needs_its_three_names(capsys):
    assert cli(["gate", "--release", "zoo:tiny-mistral/release-b-pt", "--sweep", "release-a"]) == 2
    assert "--release NEW, --baseline OLD and --sweep NAME" in capsys.readouterr().err
    assert cli(["gate", "--release", "a", "--baseline", "b", "--sweep", "no-such"]) == 2
    assert "no sweep 'no-such'; the sweeps: gemma-3-1b/res-all," in capsys.readouterr().err


@pytest.mark.full
def test_the_gate_diffs_each_ids_latents_between_the_releases(plan):
    """Release B (release A's recipe, other seeds) against A: per id, every live latent is matched, dead or born,
    once; the matched ones' cosines clear the threshold; a latent that never fired on the gate's rows is not live."""
    verdicts = paired_release_gate(
        plan, "zoo:tiny-mistral/release-b-pt", "zoo:tiny-mistral/release-a-pt", start_rows=8, budget_rows=8
    )
    table = verdicts.latent_table().set_index("id")
    assert sorted(table.index) == sorted(verdicts.old.saes)
    assert (table.matched + table.dead == table.old_live).all() and (table.matched + table.born == table.new_live).all()
    assert (table.cosine_p10 >= MATCH_THRESHOLD).all() and (table.matched > 0).all()
    for sae_id, match in verdicts.latents.items():
        dead_rows = ~live_latents(verdicts.old.saes[sae_id].W_dec)
        assert not match.old_alive[dead_rows].any()
