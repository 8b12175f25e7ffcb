"""The MAP-pooled lab model (``clipdebias-lab-map``): a timm ViT tower with SigLIP's attention-pool read-out, built
by name offline, trained with SigLIP's sigmoid loss (positives by caption identity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


def _transcribed_sigmoid_loss(img: np.ndarray, txt: np.ndarray, caption: np.ndarray, scale: float,
                              bias: float) -> float:
    """float64: -1/B sum_ij log sigmoid(l_ij (scale <img_i, txt_j> + bias)), l_ij = +1 iff caption_i = j else -1."""
    total = 0.0
    for i in range(img.shape[0]):
        for j in range(txt.shape[0]):
            z = scale * float(img[i] @ txt[j]) + bias
            label = 1.0 if caption[i] == j else -1.0
            total += -np.log(1.0 / (1.0 + np.exp(-label * z)))
    return total / img.shape[0]


def test_sigmoid_loss_equals_the_transcription() -> None:
    from clip_debias.toolchain.lab.train import sigmoid_loss

    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(3, 8, generator=gen, dtype=torch.float64), dim=-1)
    caption = torch.tensor([0, 2, 1, 0, 2, 2])
    got = sigmoid_loss(img, txt, caption, torch.tensor(10.0, dtype=torch.float64),
                       torch.tensor(-2.5, dtype=torch.float64))
    want = _transcribed_sigmoid_loss(img.numpy(), txt.numpy(), caption.numpy(), 10.0, -2.5)
    assert abs(float(got) - want) < 1e-12


def test_lab_map_config_builds_a_map_pooled_timm_tower_offline() -> None:
    import open_clip

    from clip_debias.toolchain.models.loading import register_configs

    register_configs()
    model = open_clip.create_model("clipdebias-lab-map")
    trunk = model.visual.trunk
    assert type(model.visual).__name__ == "TimmModel" and type(trunk).__name__ == "VisionTransformer"
    assert trunk.global_pool == "map" and type(trunk.attn_pool).__name__ == "AttentionPoolLatent"
    assert (len(trunk.blocks), trunk.embed_dim, trunk.blocks[0].attn.num_heads) == (6, 128, 4)
    assert trunk.head.out_features == 64 and model.logit_bias is not None
    assert model.encode_image(torch.zeros(1, 3, 64, 64)).shape == (1, 64)


def test_sigmoid_training_lowers_the_loss(tmp_path: Path) -> None:
    from clip_debias.toolchain.lab.data import make_lab_data
    from clip_debias.toolchain.lab.train import train_lab_model

    data = make_lab_data(tmp_path / "d", n_train=16, n_val=8, n_test=0, correlation=1.0, seed=1, workers=1)
    res = train_lab_model(data, tmp_path / "w.safetensors", steps=15, batch_size=16, lr=1e-3, seed=0, threads=2,
                          log=lambda s: None, model_name="clipdebias-lab-map", loss="sigmoid")
    assert len(res.losses) == 15 and all(np.isfinite(res.losses))
    assert sum(res.losses[-4:]) / 4 < sum(res.losses[:4]) / 4


def test_sigmoid_loss_needs_a_logit_bias(tmp_path: Path) -> None:
    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.lab.data import make_lab_data
    from clip_debias.toolchain.lab.train import train_lab_model

    data = make_lab_data(tmp_path / "d", n_train=4, n_val=4, n_test=0, correlation=1.0, seed=1, workers=1)
    with pytest.raises(ClipDebiasError, match="no logit bias"):
        train_lab_model(data, tmp_path / "w.safetensors", steps=1, batch_size=4, log=lambda s: None,
                        model_name="clipdebias-lab", loss="sigmoid")
