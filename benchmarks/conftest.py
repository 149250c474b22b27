"""Benchmark fixtures: built once per session, never timed."""

import pytest
import torch


@pytest.fixture(scope="session")
def device(request) -> str:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"--device {name} asked for, but torch sees no CUDA device")
    return name


def pytest_benchmark_update_machine_info(config, machine_info):
    from importlib.metadata import version

    import sae_lens
    import transformer_lens  # noqa: F401

    machine_info["torch"] = torch.__version__
    machine_info["sae_lens"] = sae_lens.__version__
    machine_info["transformer_lens"] = version("transformer-lens")
    machine_info["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
