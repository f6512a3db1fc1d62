"""The site's compute device: `[node] device`, `--device` (CONSORTIA_DEVICE) over it, and
clear errors naming the setting. CUDA is checked where a GPU is present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from consortia.common.config.settings import load_site_settings
from consortia.common.errors import ConfigError
from consortia.common.networks.device import DEVICE_ENV, select_device


def test_configured_device_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    monkeypatch.setenv(DEVICE_ENV, "cpu")  # `consortia node start --device cpu`
    assert select_device("cuda:3") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"node.device = 'cuda:1': CUDA is not available"):
        select_device("cuda:1")
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(ConfigError, match="CONSORTIA_DEVICE=cuda: CUDA is not available"):
        select_device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "gpu0")
    with pytest.raises(ConfigError, match="CONSORTIA_DEVICE=gpu0: not a device"):
        select_device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_is_used_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert select_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="CUDA device"):
        select_device(f"cuda:{torch.cuda.device_count()}")


def test_the_site_config_names_a_bad_device(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(
        '[site]\nname = "a"\n[data]\npath = "x.npz"\n[node]\ninsecure = true\ndevice = "gpu"\n'
    )
    with pytest.raises(ConfigError, match=r"node.device"):
        load_site_settings(config)
