"""The FID InceptionV3 equals pytorch-fid's network; its weights load only from local files.

pytorch-fid's own network is built from its FID blocks with random weights: its weight
download is replaced by a function that raises, so nothing can be fetched.
"""

from __future__ import annotations

import pytest
import torch

from ddpm_lib.metrics import WEIGHTS_ENV, WEIGHTS_FILENAME, WEIGHTS_URL, FIDInceptionV3
from ddpm_lib.metrics.inception import find_fid_weights


def _random_pytorch_fid_network(seed: int, calibrate: bool = True):
    """pytorch-fid's ``fid_inception_v3()`` structure with random weights and BN statistics."""
    import torchvision
    from pytorch_fid import inception as pfi

    net = torchvision.models.inception_v3(
        num_classes=1008, aux_logits=False, weights=None, init_weights=False
    )
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    if not calibrate:
        return net.eval()
    # Random weights alone make the features nearly independent of the input (the signal
    # fades layer after layer), which would make any comparison vacuous. Calibrate the batch
    # norms on random images instead, so that every layer sees normalised activations.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1.0  # running statistics := this batch's statistics
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
        net.train()
        net(torch.rand(2, 3, 128, 128, generator=generator) * 2 - 1)
    net.eval()
    return net


@pytest.fixture
def no_download(monkeypatch):
    from pytorch_fid import inception as pfi

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download weights")

    monkeypatch.setattr(pfi, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return pfi


def test_features_equal_pytorch_fid_inception(no_download, monkeypatch) -> None:
    pfi = no_download
    reference_net = _random_pytorch_fid_network(seed=1)
    monkeypatch.setattr(pfi, "fid_inception_v3", lambda: reference_net)
    theirs = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    ours = FIDInceptionV3(input_range=(0.0, 1.0))
    ours.load_state_dict(reference_net.state_dict(), strict=True)  # the published key names

    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(2))  # [0, 1]
    with torch.no_grad():
        expected = theirs(images)[0].flatten(1)  # (2, 2048), resized to 299x299 inside
        got = ours(images[:1])
    assert got.shape == (1, 2048)
    # The comparison is not vacuous: the features are not tiny and depend on the image.
    assert expected.std() > 1e-3 and (expected[0] - expected[1]).abs().max() > 1e-3
    scale = float(expected.abs().max())  # float32 rounding grows with the activations' size
    torch.testing.assert_close(got, expected[:1], rtol=1e-5, atol=1e-6 * scale)


def test_resize_and_input_range_match_pytorch_fid(no_download, monkeypatch) -> None:
    # pytorch-fid's forward with its blocks replaced by the identity returns what the network
    # would see: the resized image in [-1, 1].
    pfi = no_download
    monkeypatch.setattr(pfi, "fid_inception_v3", lambda: _random_pytorch_fid_network(0, False))
    theirs = pfi.InceptionV3([0])
    theirs.blocks = torch.nn.ModuleList([torch.nn.Identity()])
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(3))  # [0, 1]
    expected = theirs(images)[0]
    assert expected.shape == (2, 3, 299, 299)
    ours = FIDInceptionV3(input_range=(0, 1))
    torch.testing.assert_close(ours._prepare(images), expected, rtol=0, atol=0)
    ours.input_range = (-1.0, 1.0)  # ddpm_lib's convention: the same pictures, the same input
    torch.testing.assert_close(ours._prepare(images * 2 - 1), expected, rtol=0, atol=1e-6)
    ours.input_range = (0.0, 255.0)
    torch.testing.assert_close(ours._prepare(images * 255), expected, rtol=0, atol=1e-5)


def test_from_pretrained_loads_a_local_file_from_argument_or_environment(
    tmp_path, monkeypatch, no_download
) -> None:
    state_dict = FIDInceptionV3().state_dict()
    generator = torch.Generator().manual_seed(0)
    state_dict["fc.bias"] = torch.randn(1008, generator=generator)
    path = tmp_path / WEIGHTS_FILENAME
    torch.save(state_dict, path)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)

    from_argument = FIDInceptionV3.from_pretrained(path)
    torch.testing.assert_close(from_argument.fc.bias, state_dict["fc.bias"])
    assert not from_argument.training
    assert not any(p.requires_grad for p in from_argument.parameters())

    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    assert find_fid_weights() == path


def test_missing_weights_give_a_clear_error(tmp_path, monkeypatch, no_download) -> None:
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as error:
        FIDInceptionV3.from_pretrained()
    message = str(error.value)
    assert WEIGHTS_FILENAME in message and WEIGHTS_URL in message and WEIGHTS_ENV in message

    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        find_fid_weights()

    # A file pytorch-fid would have cached is found without any configuration.
    monkeypatch.delenv(WEIGHTS_ENV)
    cached = tmp_path / "hub" / "checkpoints" / WEIGHTS_FILENAME
    cached.parent.mkdir(parents=True)
    torch.save({"not": torch.zeros(1)}, cached)
    assert find_fid_weights() == cached
    with pytest.raises(ValueError, match="not the FID Inception state dict"):
        FIDInceptionV3.from_pretrained()


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="input_range"):
        FIDInceptionV3(input_range=(1.0, 0.0))
    net = FIDInceptionV3(resize_input=False)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.zeros(1, 1, 80, 80))
    with pytest.raises(TypeError, match="floating point"):
        net(torch.zeros(1, 3, 80, 80, dtype=torch.uint8))
