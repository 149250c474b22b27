"""Case files: the shipped registry is valid, ids read naturally, and malformed files fail with file, field, fix."""

import re
from pathlib import Path

import pytest

from sae_bench.cases.registry import CaseFileError, load_registry, read_case_file

CASES = Path(__file__).parents[2] / "benchmarks" / "cases"
EXPECTATIONS = Path(__file__).parents[2] / "expectations"

MINIMAL = """
family = "toy"
[saes]
base-sae = "zoo:tiny-mistral/base-sae"
[models]
base = "zoo:tiny-mistral/base"
chat = "zoo:tiny-mistral/instruct"
[defaults]
hook = "blocks.2.hook_resid_pre"
dataset = "zoo:heldout"
tokens = 1024
context = 128
groups = ["ce"]
"""


def _file(tmp_path, text: str) -> Path:
    path = tmp_path / "toy.toml"
    path.write_text(text)
    return path


def test_shipped_registry_has_every_family_and_an_expectation_for_every_hub_case():
    """Every hub case has an expectation file, except those of families no paper gives numbers for."""
    from sae_bench.expectations.published import NOT_PUBLISHED

    registry = load_registry(CASES)
    families = {case.family for case in registry}
    seeds = {"tiny-mistral", "tiny-qwen2", "tiny-gemma", "mistral-7b", "qwen1.5-0.5b", "gemma-2b"}
    assert seeds | {"gemma-2-2b", "gemma-2-9b", "llama-3.1-8b"} <= families
    for case in registry:
        if case.tier == "hub" and case.family not in NOT_PUBLISHED:
            assert case.expectation_path(EXPECTATIONS).is_file(), case.id


def test_ids_read_like_sae_at_model_with_mask_and_variant():
    ids = {case.id for case in load_registry(CASES)}
    assert "mistral-7b/base-sae@instruct" in ids
    assert "tiny-mistral/base-sae@instruct/rollout" in ids
    assert "tiny-mistral/base-sae@instruct/filtered" in ids
    assert "tiny-mistral/base-sae@base-vs-instruct" in ids


def test_grid_expands_every_sae_and_model(tmp_path):
    path = _file(
        tmp_path,
        MINIMAL + '[[grid]]\nsaes = ["base-sae"]\nmodels = ["base", "chat"]\nvariants = [{}, { mask = "rollout" }]\n',
    )
    ids = [case.id for case in read_case_file(path)]
    assert ids == ["toy/base-sae@base", "toy/base-sae@base/rollout", "toy/base-sae@chat", "toy/base-sae@chat/rollout"]


@pytest.mark.parametrize(
    ("extra", "field", "fix"),
    [
        ('[[case]]\nsae = "base-sea"\nmodel = "base"\n', r"case\[0\]\.sae", "did you mean base-sae"),
        ('[[case]]\nsae = "base-sae"\nmodel = "base"\ntokens = -3\n', r"case\[0\]\.tokens", "tokens = 8192"),
        ('[[case]]\nsae = "base-sae"\nmodel = "base"\nmask = "prompt"\n', r"case\[0\]\.mask", "choose from"),
        ('[[case]]\nsae = "base-sae"\nmodel = "base"\ngroup = ["ce"]\n', r"case\[0\]", "group → groups"),
        ('[[case]]\nsae = "base-sae"\nmodel = "base"\ngroups = ["universality"]\n', r"case\[0\]\.groups", "choose"),
        ('[[case]]\nsae = "base-sae"\nmodel = "base"\ntoken_classes = "yes"\n', "token_classes", "= true"),
        (
            '[[case]]\nsae = "base-sae"\nmodel = "base"\noutliers = { threshold = 5 }\n',
            "scaled norms",
            "scaling_factor",
        ),
        ("", "top level", "add"),
    ],
)
def test_malformed_case_file_names_file_field_and_fix(tmp_path, extra, field, fix):
    path = _file(tmp_path, MINIMAL + extra)
    with pytest.raises(CaseFileError, match=field) as err:
        read_case_file(path)
    assert str(path) in str(err.value) and fix in str(err.value)


def test_toml_syntax_errors_are_case_file_errors(tmp_path):
    with pytest.raises(CaseFileError, match="syntax"):
        read_case_file(_file(tmp_path, "family = \n"))


def test_duplicate_ids_across_files_are_rejected(tmp_path):
    body = MINIMAL + '[[case]]\nsae = "base-sae"\nmodel = "base"\n'
    (tmp_path / "a.toml").write_text(body)
    (tmp_path / "b.toml").write_text(body)
    with pytest.raises(CaseFileError, match="also defined in"):
        load_registry(tmp_path)


def test_unknown_case_id_suggests_close_ones():
    with pytest.raises(KeyError, match="did you mean"):
        load_registry(CASES).get("tiny-mistral/base-sae@instruc")


def test_hub_case_offline_skip_names_everything_it_lacks_at_once(monkeypatch, tmp_path):
    from sae_bench.suite.runner import missing_for

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine holds
    monkeypatch.setenv("WANDB_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("SAE_BENCH_DATASETS", raising=False)
    monkeypatch.setattr("pathlib.Path.home", lambda: tmp_path)  # no ~/.netrc
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    registry = load_registry(CASES)
    reason = missing_for(registry.get("gemma-2b/res-jb-l6@python-codes"), "cpu")
    assert reason.startswith("gemma-2b/res-jb-l6@python-codes needs (1) a CUDA GPU")
    for lacking in (
        "jbloom/Gemma-2b-Residual-Stream-SAEs",
        "shahdishank/gemma-2b-it-finetune-python-codes",
        "google/gemma-2b",
        "dataset HuggingFaceFW/fineweb",
        "no local copy in",
    ):
        assert lacking in reason
    reason = missing_for(registry.get("qwen1.5-0.5b/base-sae@chat"), "cpu")
    assert "(1) wandb artifact" in reason and "WANDB_API_KEY" in reason
    assert "(2) HF repo Qwen/Qwen1.5-0.5B-Chat: HF_HUB_OFFLINE is set" in reason
    assert "(3) dataset monology/pile-uncopyrighted: HF_HUB_OFFLINE is set" in reason
    assert missing_for(registry.get("tiny-qwen2/base-sae@chat"), "cpu") is None


def test_uncached_hub_model_with_hub_offline_names_the_repo_and_the_fix(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from sae_bench.sources.hub import missing

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    [lack] = missing("hf:Qwen/Qwen1.5-0.5B-Chat")
    assert lack.prerequisite == "HF repo Qwen/Qwen1.5-0.5B-Chat" and lack.fix == "fetch"
    assert "HF_HUB_OFFLINE is set and Qwen/Qwen1.5-0.5B-Chat is not in the HF cache" in str(lack)
    assert "`sae-bench fetch` downloads it" in str(lack)


# --- sweeps: a release × the family's models, expanded into ordinary cases ---------------------------------------

SWEEP_FAMILY = """family = "my-release"
[models]
base = "zoo:tiny-mistral/base"
instruct = "zoo:tiny-mistral/instruct"
[defaults]
dataset = "zoo:heldout"
tokens = 1024
context = 128
groups = ["reconstruction"]
"""


def _sae_folder(root, name: str, hook: str, width: int = 64):
    from sae_lens import StandardSAE, StandardSAEConfig

    config = StandardSAEConfig(d_in=128, d_sae=width)
    config.metadata.hook_name = hook
    StandardSAE(config).save_model(root / name)


def test_a_sweep_expands_a_release_folder_into_cases_with_hooks_and_filters(tmp_path):
    release = tmp_path / "my-release-saes"
    for layer in range(4):
        for width in ("1k", "4k"):
            _sae_folder(release, f"layer_{layer}_width_{width}", f"blocks.{layer}.hook_resid_post")
    (tmp_path / "my-release.toml").write_text(
        SWEEP_FAMILY
        + """
[[sweep]]
name = "rel"
releases = { pt = "my-release-saes" }
models = ["base", "instruct"]
hook = "blocks.{layer}.hook_resid_post"
layers = [1, 2]
widths = ["1k"]
variants = [{}, { variant = "filtered", outliers = { threshold = 3.0, norm = "mean-norm" } }]
"""
    )
    registry = load_registry(tmp_path)
    ids = sorted(registry.cases)
    assert ids == sorted(
        f"my-release/pt/layer_{layer}_width_1k@{model}{variant}"
        for layer in (1, 2)
        for model in ("base", "instruct")
        for variant in ("", "/filtered")
    )
    case = registry.get("my-release/pt/layer_2_width_1k@instruct/filtered")
    assert case.hook == "blocks.2.hook_resid_post" and case.sweep == "rel"
    assert case.sae == str(release / "layer_2_width_1k")
    assert case.expectation_path(tmp_path) == tmp_path / "my-release" / "rel@instruct.json"  # one file per model


def test_a_sweep_takes_a_saelens_releases_ids_from_its_registry(tmp_path):
    (tmp_path / "gemma.toml").write_text(
        SWEEP_FAMILY
        + """
[[sweep]]
name = "pt-res-all"
releases = { pt-res-all = "saelens:gemma-scope-2-270m-pt-res-all" }
models = ["base"]
hook = "blocks.{layer}.hook_resid_post"
ids = "layer_6_width_16k_.*"
"""
    )
    ids = sorted(load_registry(tmp_path).cases)
    assert ids == [
        "my-release/pt-res-all/layer_6_width_16k_l0_big@base",
        "my-release/pt-res-all/layer_6_width_16k_l0_small@base",
    ]
    assert load_registry(tmp_path).get(ids[0]).sae == "saelens:gemma-scope-2-270m-pt-res-all/layer_6_width_16k_l0_big"


@pytest.mark.parametrize(
    ("sweep", "needle"),
    [
        ('name = "x"\nmodels = ["base"]\nhook = "blocks.{layer}.hook_resid_post"', "sweep[0].releases: missing"),
        (
            'name = "x"\nreleases = { pt = "saelens:no-such-release" }\nmodels = ["base"]\nhook = "h"',
            "is not in SAELens's registry",
        ),
        (
            'name = "x"\nreleases = { pt = "zoo:tiny-mistral/release-a-pt" }\nmodels = ["base"]\n'
            'hook = "blocks.{layer}.hook_resid_post"\nids = "(("',
            "sweep[0].ids: not a regular expression",
        ),
        (
            'name = "x"\nreleases = { pt = "zoo:tiny-mistral/release-a-pt" }\nmodels = ["base"]\n'
            'hook = "blocks.{layer}.hook_resid_post"\nlayers = [3]',
            "expected [first, last]",
        ),
    ],
    ids=["no-releases", "unknown-release", "bad-pattern", "bad-layers"],
)
def test_a_bad_sweep_names_its_field(tmp_path, sweep, needle):
    from sae_bench.errors import BadInput

    (tmp_path / "bad.toml").write_text(SWEEP_FAMILY + "\n[[sweep]]\n" + sweep + "\n")
    with pytest.raises(BadInput, match=re.escape(needle)):
        load_registry(tmp_path)


def test_an_offline_run_ends_with_one_grouped_summary_of_what_is_missing(monkeypatch, tmp_path, capsys):
    """Each missing prerequisite once, with the number of cases it blocks and how to get it; no per-item skip
    lines unless -rs asks for them."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("WANDB_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("SAE_BENCH_DATASETS", raising=False)
    monkeypatch.setattr("pathlib.Path.home", lambda: tmp_path)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    args = [str(CASES.parent / "test_cases.py"), "-p", "no:cacheprovider", "-q", "--no-results", "-k", "qwen1"]
    assert pytest.main(args) == pytest.ExitCode.OK
    out = capsys.readouterr().out
    summary = out.split("what the skipped cases lack here", 1)[1]
    assert "SKIPPED" not in out
    row = next(line for line in summary.splitlines() if "HF repo Qwen/Qwen1.5-0.5B-Chat " in line)
    assert row.startswith("|       9 |")  # once, with the number of cases it blocks
    assert summary.count("Qwen/Qwen1.5-0.5B-Chat is not in the HF cache") == 1
    assert 'sae-bench fetch -k "qwen1.5-0.5b"' in row  # the one command that gets it
    assert pytest.main([*args, "-rs"]) == pytest.ExitCode.OK
    assert "SKIPPED" in capsys.readouterr().out  # each item's own reason, when asked
