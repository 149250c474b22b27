"""One source spec type (`sae_bench.source_spec`): every spec the shipped case files name parses to its scheme,
body and parameters; a folder is local; a text without a scheme is refused where a hub source is expected."""

from __future__ import annotations

import pytest

from sae_bench.cases.registry import SHIPPED_CASES, load_registries
from sae_bench.errors import BadInput
from sae_bench.source_spec import SCHEMES, parse_spec, source_spec


def test_a_spec_parses_to_scheme_body_and_parameters():
    spec = source_spec("hf:ORG/NAME?as=google/gemma-2b&vocab=256000")
    assert (spec.scheme, spec.body) == ("hf", "ORG/NAME")
    assert dict(spec.params) == {"as": "google/gemma-2b", "vocab": "256000"}
    assert (spec.tier, spec.is_local, spec.zoo_family) == ("hub", False, None)
    zoo = source_spec("zoo:tiny-mistral/base-sae")
    assert (zoo.tier, zoo.zoo_family, zoo.body) == ("zoo", "tiny-mistral", "tiny-mistral/base-sae")


@pytest.mark.parametrize("folder", ["./my-sae", "/abs/path", "relative/sae", "C-drive:/x y"])
def test_a_folder_is_local(folder):
    spec = source_spec(folder)
    assert spec.is_local and spec.scheme == "" and spec.body == folder and spec.tier == "hub"
    if ":" not in folder:
        with pytest.raises(BadInput, match="has no scheme"):
            parse_spec(folder)


def test_an_unknown_scheme_stays_a_scheme_so_its_loader_names_it():
    assert source_spec("gs:bucket/sae").scheme == "gs" and "gs" not in SCHEMES


def test_every_shipped_spec_parses_once_to_a_known_scheme():
    registry = load_registries((SHIPPED_CASES,))
    texts = {s for case in registry for s in (case.sae, case.model, case.base_model, case.dataset) if s}
    assert {source_spec(text).scheme for text in texts} <= set(SCHEMES)
    assert all(source_spec(text) is source_spec(text) for text in texts)  # parsed once, then kept
