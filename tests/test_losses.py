"""Losses: masked-weight L2, HOG vs scikit-image, LPIPS backbone loading, feature-model aux targets, hinge, their sum."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimflow_core.errors import MIMFlowError
from mimflow_core.hog import hog_cells, hog_patch_targets
from mimflow_core.losses import (AuxTargets, HOGTarget, TrainingLoss, build_aux_targets, build_perceptual,
                                 hinge_d_loss, hinge_g_loss, masked_l2)


def test_masked_l2_weights_masked_patches_pixelwise():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 3, 16, 16, generator=g), torch.randn(3, 3, 16, 16, generator=g)
    mask = torch.rand(3, 16, generator=g) < 0.5  # 4x4 grid of 4-pixel patches
    assert torch.allclose(masked_l2(x, y, mask, 4, 1.0), F.mse_loss(x, y))
    pixel_mask = mask.view(3, 1, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3).float()
    expected = ((1 + 4.0 * pixel_mask) * (x - y) ** 2).mean()  # masked weight 5, visible weight 1
    assert torch.allclose(masked_l2(x, y, mask, 4, 5.0), expected)


@pytest.mark.parametrize("cell", [4, 8])
def test_hog_matches_scikit_image(cell):
    from skimage.feature import hog

    rng = np.random.default_rng(cell)
    image = rng.random((32, 24, 3))
    ref = hog(image, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(1, 1), block_norm="L2",
              channel_axis=-1, feature_vector=False)[:, :, 0, 0, :]
    ours = hog_cells(torch.from_numpy(image).permute(2, 0, 1)[None], cell)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_hog_patch_targets_concatenate_the_cells_of_each_patch():
    from skimage.feature import hog

    image = np.random.default_rng(1).random((32, 32, 3))
    ref = hog(image, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(1, 1), block_norm="L2",
              channel_axis=-1, feature_vector=False)[:, :, 0, 0, :]  # (4, 4, 9) cells
    targets = hog_patch_targets(torch.from_numpy(image).permute(2, 0, 1)[None], 16)[0]  # patches 16 px: 2x2 cells
    assert targets.shape == (4, 36) and HOGTarget(16).dim == 36
    patch = 1  # top-right patch: cell rows 0-1, cell columns 2-3, in (row, col, bin) order
    np.testing.assert_allclose(targets[patch].numpy(), ref[0:2, 2:4].reshape(-1), atol=1e-6)


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2], relu(1 + fake) = [0, 1, 2]
    assert torch.isclose(hinge_d_loss(real, fake), torch.tensor(0.5 * (2.5 / 3 + 3.0 / 3)))
    assert torch.isclose(hinge_g_loss(fake), torch.tensor(2.0 / 3))


def test_perceptual_needs_weights_and_loads_a_torchvision_vgg16(tmp_path):
    import torchvision

    with pytest.raises(MIMFlowError, match="--lpips-backbone PATH"):
        build_perceptual(1.1, None)
    assert build_perceptual(0.0, None) is None
    torch.manual_seed(0)  # VGG16's convolutional trunk, built as torchvision builds vgg16().features
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg.pth")
    loss = build_perceptual(1.1, tmp_path / "vgg.pth")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    scaled = loss.lpips.scaling_layer(x)
    with torch.no_grad():
        trunk = loss.lpips.net(scaled)
        for out, end in zip(trunk, (4, 9, 16, 23, 30)):  # relu1_2 ... relu5_3 of torchvision's own VGG16
            torch.testing.assert_close(out, features[:end](scaled))
        assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
        assert loss(x, -x).item() > 0
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(MIMFlowError, match="not a torchvision vgg16"):
        build_perceptual(1.1, tmp_path / "bad.pth")


class _TokenNet(nn.Module):
    """A stand-in ViT: a CLS token followed by a 4x4 grid of patch tokens."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 8, 8)

    def forward(self, x):
        tokens = self.conv(x).flatten(2).transpose(1, 2)
        return torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)


def test_torchscript_and_hub_targets_resample_and_normalise(tmp_path):
    torch.manual_seed(0)
    net = _TokenNet()
    torch.jit.script(net).save(str(tmp_path / "feat.pt"))
    targets = build_aux_targets(f"hog+ts:{tmp_path / 'feat.pt'},size=32", patch_size=4, grid=8)
    assert targets.names == ["hog", "feat"] and targets.dim == 9 + 6
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = targets(x)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        grid = net.conv(((x + 1) / 2 - mean) / std)  # (2, 6, 4, 4) -> bilinear to the 8x8 patch grid
    expected = F.interpolate(grid, size=(8, 8), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out[..., 9:], F.layer_norm(expected, (6,)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[..., :9], hog_patch_targets(x, 4))

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text("import torch\n\ndef conv(pretrained=False):\n"
                                     "    return torch.nn.Conv2d(3, 5, 16, 16)\n")
    weights = torch.nn.Conv2d(3, 5, 16, 16).state_dict()
    torch.save(weights, tmp_path / "w.pth")
    hub = build_aux_targets(f"hub:{repo}:conv,weights={tmp_path / 'w.pth'},size=32,norm=clip", 4, 2)
    conv = hub.targets[0].net
    assert torch.equal(conv.weight, weights["weight"]) and hub.dim == 5
    assert hub(x).shape == (2, 4, 5)

    for bad, message in (("sift", "unknown target"), (f"ts:{tmp_path / 'missing.pt'}", "no such TorchScript"),
                         (f"ts:{tmp_path / 'feat.pt'},colour=red", "unknown option")):
        with pytest.raises(MIMFlowError, match=message):
            build_aux_targets(bad, 4, 8)


def test_aux_loss_is_restricted_to_masked_patches():
    targets = AuxTargets([HOGTarget(4)])
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 64, 9, generator=g), torch.randn(2, 64, 9, generator=g)
    mask = torch.rand(2, 64, generator=g) < 0.5
    expected = ((pred - target) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(targets.loss(pred, target, mask)["aux_hog"], expected)
    none = torch.zeros_like(mask)  # nothing masked (e2e-nomask): every patch counts
    torch.testing.assert_close(targets.loss(pred, target, none)["aux"], ((pred - target) ** 2).mean())


def test_training_loss_weighs_only_the_outputs_a_stage_computes():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    mask = torch.tensor([[True, False, False, True], [False, False, True, False]])
    aux = AuxTargets([HOGTarget(4)])
    loss = TrainingLoss(4, mim_weight=2.0, perceptual_weight=0.0, aux_weight=0.5, gan_weight=0.05, aux_targets=aux)
    recon, pred = torch.zeros_like(images), torch.zeros(2, 4, aux.dim)
    nll = {"loss": torch.tensor(3.0), "bpd": torch.tensor([1.0, 2.0])}
    total, logs = loss({"recon": recon, "nll": nll, "aux": pred}, images, mask, beta=0.1)
    expected = masked_l2(recon, images, mask, 4, 2.0) + 0.1 * 3.0 + 0.5 * aux.loss(pred, aux(images), mask)["aux"]
    assert torch.allclose(total, expected)
    assert set(logs) == {"rec_l2", "beta", "nll", "bpd", "aux_hog", "aux"} and logs["bpd"] == 1.5
    total, logs = loss({"nll": nll}, images, mask, beta=0.1)  # the starflow flow stage: the NLL alone
    assert total.item() == pytest.approx(0.3) and set(logs) == {"beta", "nll", "bpd"}
