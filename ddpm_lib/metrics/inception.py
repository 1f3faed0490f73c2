"""The InceptionV3 network used for FID, with the TensorFlow graph's quirks.

FID (Heusel et al. 2017) is defined on the 2048-d ``pool_3`` features of the InceptionV3 graph
``inception-2015-12-05`` released with TensorFlow. That graph differs from torchvision's
InceptionV3 in three places, which this module reproduces so that the published PyTorch port
of its weights (``pt_inception-2015-12-05-6726825d.pth``, made for pytorch-fid) gives the
published numbers:

* the average-pool branches of the A, C and E blocks ignore the zero padding
  (``count_include_pad=False``), as TensorFlow's ``avg_pool`` does;
* the last E block (``Mixed_7c``) pools its branch with a max pool, not an average pool;
* the classifier has 1008 outputs.

Submodule names equal those of torchvision's ``Inception3`` (``Conv2d_1a_3x3``, ``Mixed_5b``,
... ``fc``), so the weights file loads with ``strict=True``. Nothing is ever downloaded: the
file is read from a path given by the caller, from ``$DDPM_LIB_FID_WEIGHTS``, or from the
torch hub cache where pytorch-fid keeps it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILENAME
)
WEIGHTS_ENV = "DDPM_LIB_FID_WEIGHTS"
INPUT_SIZE = 299
FEATURE_DIM = 2048


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as in TensorFlow), ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 average pool, stride 1, that averages only over the pixels inside the image."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (``Mixed_5b..5d``): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35x35 -> 17x17 (``Mixed_6a``)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), branch3x3dbl, branch_pool], dim=1)


class InceptionC(nn.Module):
    """17x17 block (``Mixed_6b..6e``) with factorised 1x7 / 7x1 convolutions."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (
            self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5
        ):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17x17 -> 8x8 (``Mixed_7a``)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], dim=1)


class InceptionE(nn.Module):
    """8x8 block (``Mixed_7b``, ``Mixed_7c``) with expanded 1x3 / 3x1 branches.

    ``pool`` is ``"avg"`` (padding-excluding average, ``Mixed_7b``) or ``"max"``
    (``Mixed_7c``: the TensorFlow FID graph max-pools here).
    """

    def __init__(self, in_channels: int, pool: str = "avg") -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max'; got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat(
            [self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1
        )
        if self.pool == "avg":
            pooled = _tf_avg_pool(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(pooled)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, branch_pool], dim=1)


class FIDInceptionV3(nn.Module):
    """InceptionV3 as in TensorFlow's FID graph; ``forward`` returns 2048-d pool features.

    Args:
        input_range: the range ``(low, high)`` of the images passed to :meth:`forward`:
            ``(-1, 1)`` (ddpm_lib's convention, the default) or ``(0, 1)`` (pytorch-fid's).
            Images are mapped affinely to the ``[-1, 1]`` the network was trained on.
        resize_input: resize every image bilinearly to 299x299 first (``align_corners=False``,
            no antialiasing), as pytorch-fid does. Turn off only for images already 299x299.

    ``forward(images)``: ``images`` is ``(B, 3, H, W)`` floating point in ``input_range``;
    returns ``(B, 2048)`` in the dtype of the network. The network is built in eval mode with
    random weights and without gradients; use :meth:`from_pretrained` (or
    :func:`load_fid_inception`) for the FID weights.
    """

    def __init__(
        self, input_range: tuple[float, float] = (-1.0, 1.0), resize_input: bool = True
    ) -> None:
        super().__init__()
        try:
            low, high = (float(v) for v in input_range)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"input_range must be a pair (low, high); got {input_range!r}"
            ) from error
        if not high > low:
            raise ValueError(f"input_range must have high > low; got {input_range!r}")
        self.input_range = (low, high)
        self.resize_input = bool(resize_input)
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, 1008)  # the 1008-way classifier; unused by FID
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(
        cls,
        weights_path: str | os.PathLike | None = None,
        input_range: tuple[float, float] = (-1.0, 1.0),
        resize_input: bool = True,
    ) -> FIDInceptionV3:
        """Build the network and load ``pt_inception-2015-12-05-6726825d.pth``.

        The file is looked up, in order, at ``weights_path``, at ``$DDPM_LIB_FID_WEIGHTS`` and
        in the torch hub cache (``$TORCH_HOME/hub/checkpoints``, where pytorch-fid saves it).
        Nothing is downloaded; a ``FileNotFoundError`` says where to get the file.
        """
        path = find_fid_weights(weights_path)
        network = cls(input_range=input_range, resize_input=resize_input)
        from ddpm_lib._readers import read_bytes, torch_load

        state_dict = torch_load(read_bytes(path, WEIGHTS_FILENAME), str(path))
        if not isinstance(state_dict, dict):
            raise ValueError(f"{path} does not hold a state dict; expected {WEIGHTS_FILENAME}")
        try:
            network.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            first_line = str(error).splitlines()[0]
            raise ValueError(
                f"{path} is not the FID Inception state dict ({WEIGHTS_FILENAME}): {first_line}"
            ) from error
        return network

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor; got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must have shape (B, 3, H, W); got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise TypeError(
                f"images must be floating point in {self.input_range}; got dtype {images.dtype}"
            )
        x = images.to(self.fc.weight.dtype)
        if self.resize_input:
            x = F.interpolate(
                x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
            )
        low, high = self.input_range
        if (low, high) != (-1.0, 1.0):
            x = (x - low) * (2.0 / (high - low)) - 1.0  # (B, 3, 299, 299) in [-1, 1]
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images in ``input_range`` -> ``(B, 2048)`` pool_3 features."""
        x = self._prepare(images)
        x = self.Conv2d_1a_3x3(x)  # (B, 32, 149, 149)
        x = self.Conv2d_2a_3x3(x)  # (B, 32, 147, 147)
        x = self.Conv2d_2b_3x3(x)  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_3b_1x1(x)  # (B, 80, 73, 73)
        x = self.Conv2d_4a_3x3(x)  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 35)
        x = self.Mixed_6a(x)  # (B, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (B, 768, 17, 17)
        x = self.Mixed_7a(x)  # (B, 1280, 8, 8)
        x = self.Mixed_7c(self.Mixed_7b(x))  # (B, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (B, 2048)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1008)`` classifier logits (for the Inception Score); index 0 is unused."""
        return self.fc(self.forward(images))


def find_fid_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """Return the path of the FID Inception weights, or raise ``FileNotFoundError``.

    Looks at ``weights_path``, then ``$DDPM_LIB_FID_WEIGHTS``, then
    ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``. An explicitly given
    path (argument or environment variable) that does not exist is an error by itself.
    """
    hint = (
        f"download {WEIGHTS_FILENAME} (about 92 MB) from {WEIGHTS_URL} and pass its path "
        f"(weights_path= / --inception-weights) or set {WEIGHTS_ENV}"
    )
    explicit = (("weights_path", weights_path), (WEIGHTS_ENV, os.environ.get(WEIGHTS_ENV)))
    for source, candidate in explicit:
        if candidate is not None and str(candidate) != "":
            path = Path(candidate).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"FID Inception weights not found at {source}={str(candidate)!r}; {hint}"
                )
            return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME
    if cached.is_file():
        return cached
    raise FileNotFoundError(f"the FID Inception weights file is needed and was not found; {hint}")


def load_fid_inception(
    weights_path: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    input_range: tuple[float, float] = (-1.0, 1.0),
) -> FIDInceptionV3:
    """:meth:`FIDInceptionV3.from_pretrained`, moved to ``device`` (CPU when ``None``)."""
    network = FIDInceptionV3.from_pretrained(weights_path, input_range=input_range)
    return network.to(device) if device is not None else network
