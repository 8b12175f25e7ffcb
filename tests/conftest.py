"""Shared fixtures: random-weight models (no pretrained weights exist on our machines), loaded once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def weights_cache(tmp_path_factory):
    """The weights cache (toolchain/models/checkpoint.py) in a session temp folder: tests never write to ~/.cache."""
    from clip_debias.toolchain.models.checkpoint import CACHE_ENV

    folder = tmp_path_factory.mktemp("weights-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="session")
def tiny_clip():
    """Random-weight tiny ViT CLIP (4 layers x 4 heads, width 64, D 32, 32x32 images)."""
    import torch

    from clip_debias.toolchain.models.loading import load_clip

    torch.manual_seed(0)
    return load_clip("clipdebias-tiny", random_weights=True)


@pytest.fixture(scope="session")
def vitb32_clip():
    import torch

    from clip_debias.toolchain.models.loading import load_clip

    torch.manual_seed(0)
    return load_clip("ViT-B-32", random_weights=True)
