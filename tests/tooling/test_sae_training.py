"""The SAE training wrapper and Kissane's fine-tuning recipe: the schedule a real (tiny) run uses is the stated one."""

import pytest
import torch
from sae_lens.training.sae_trainer import SAETrainer

from sae_bench.sources.zoo.training_specs import SaeTrainingSpec, kissane_finetune
from sae_bench.tooling.sae_training import finetune_sae, train_sae
from tests.conftest import sample_tokens, tiny_model

# SAELens notes, expected here: a 24-row dataset is reused many times over.
pytestmark = [
    pytest.mark.filterwarnings("ignore:All samples in the training dataset have been exhausted:UserWarning"),
    pytest.mark.filterwarnings("ignore:The training dataset contains fewer samples:UserWarning"),
    pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning"),
]

BASE = SaeTrainingSpec(
    hook="blocks.2.hook_resid_pre",
    d_sae=32,
    l1_coefficient=2.0,
    lr=1e-3,
    training_tokens=8 * 256,
    batch_size_tokens=256,
    context_size=16,
    n_batches_in_buffer=16,
    seed=5,
)


def test_kissane_finetune_spec_keeps_lr_and_l1_and_sets_the_schedule():
    spec = kissane_finetune(BASE, training_tokens=100 * 256)
    assert (spec.lr, spec.l1_coefficient, spec.batch_size_tokens, spec.l1_warm_up_steps) == (1e-3, 2.0, 256, 0)
    assert spec.steps == 100
    assert (spec.lr_warm_up_steps, spec.lr_decay_steps) == (5, 20)


@pytest.fixture(scope="module")
def model_and_rows():
    model = tiny_model(seed=3)
    return model, sample_tokens(model, n_sequences=24, length=16, seed=4)


def _recorded_lrs(monkeypatch) -> list[float]:
    lrs: list[float] = []
    step = SAETrainer.step

    def recording_step(self, batch):
        lrs.append(self.optimizer.param_groups[0]["lr"])
        return step(self, batch)

    monkeypatch.setattr(SAETrainer, "step", recording_step)
    return lrs


def test_finetune_run_warms_up_holds_then_decays_to_zero(model_and_rows, monkeypatch):
    model, rows = model_and_rows
    base = train_sae(model, rows, BASE)
    lrs = _recorded_lrs(monkeypatch)
    tuned = finetune_sae(base.sae, base.scaling_factor, model, rows, BASE, training_tokens=40 * 256)
    assert tuned.steps == len(lrs) == 40
    warm, decay = 2, 8  # 5% and 20% of 40 steps
    assert lrs[0] < lrs[1] == pytest.approx(1e-3)  # linear warm-up over the first 2 steps
    assert lrs[warm : 40 - decay] == pytest.approx([1e-3] * (40 - warm - decay))
    tail = lrs[40 - decay :]
    assert all(a > b for a, b in zip(tail, tail[1:], strict=False)) and tail[-1] < 1e-3 / decay + 1e-12
    assert tuned.tokens_seen == 40 * 256


def test_training_folds_the_scaling_factor_so_the_sae_reads_raw_activations(model_and_rows):
    model, rows = model_and_rows
    trained = train_sae(model, rows, BASE)
    assert trained.sae.cfg.normalize_activations == "none"
    assert trained.scaling_factor > 0
    x = model.run_with_cache(rows[:2], names_filter=BASE.hook)[1][BASE.hook].reshape(-1, model.cfg.d_model)
    assert torch.isfinite(trained.sae.decode(trained.sae.encode(x))).all()


def test_init_sae_needs_its_scaling_factor(model_and_rows):
    model, rows = model_and_rows
    trained = train_sae(model, rows, BASE)
    with pytest.raises(ValueError, match="init_scaling_factor"):
        train_sae(model, rows, BASE, init_sae=trained.sae)


def test_buffer_smaller_than_a_batch_is_rejected_before_training(model_and_rows):
    model, rows = model_and_rows
    from dataclasses import replace

    with pytest.raises(ValueError, match="n_batches_in_buffer"):
        train_sae(model, rows, replace(BASE, n_batches_in_buffer=2))
