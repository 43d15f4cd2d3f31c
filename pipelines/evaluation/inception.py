"""Inception-v3 as a feature network for FID/KID, in plain PyTorch, loaded only from a local weights file.

The module names match torchvision's `Inception3`, so both common weight files load with `weights_only=True`:
torchvision's ImageNet state dict (1000 classes) and pytorch-fid's `pt_inception-2015-12-05` port of the
TensorFlow FID network (1008 classes), whose pooling differs in a few blocks (`variant="fid"`, detected from
the file). Nothing here downloads anything: without a file there is no FID, and `WEIGHTS_HELP` says why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INPUT_SIZE = 299
POOL_FEATURES = 2048
WEIGHTS_HELP = (
    "FID/KID need Inception-v3 weights from a local file (--inception-weights PATH); ganpipe never downloads "
    "weights. Copy one onto this machine once, e.g. pytorch-fid's release file "
    "pt_inception-2015-12-05-6726825d.pth (the TensorFlow FID network; numbers comparable with published FIDs) "
    "or torchvision's inception_v3_google-0cc3c7bd.pth (what torchvision.models.inception_v3(weights="
    "'IMAGENET1K_V1') caches under ~/.cache/torch/hub/checkpoints/)."
)


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor, fid: bool) -> Tensor:
    # The TF graph averages over valid pixels only at the borders; torchvision counts the zero padding.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=not fid)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int, *, fid: bool) -> None:
        super().__init__()
        self.fid = fid
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x, self.fid)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, *, fid: bool) -> None:
        super().__init__()
        self.fid = fid
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool(x, self.fid)),
        ], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, *, pool: str) -> None:
        super().__init__()
        self.pool = pool  # "avg" (torchvision), "avg_valid" (FID Mixed_7b) or "max" (FID Mixed_7c)
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool(x, self.pool == "avg_valid")
        return torch.cat([
            self.branch1x1(x),
            torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1),
            torch.cat([self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl)], 1),
            self.branch_pool(pooled),
        ], 1)


class InceptionV3(nn.Module):
    """Inception-v3 (Szegedy et al. 2016) up to its 2048-d average pool, plus `fc` so whole files load strictly.

    Input: (N, 3, 299, 299) in [-1, 1] — what both weight files expect after their own input transforms
    (torchvision's `transform_input` maps ImageNet-normalised input to exactly this range). No auxiliary head.
    """

    def __init__(self, *, num_classes: int = 1000, variant: str = "torchvision") -> None:
        super().__init__()
        if variant not in ("torchvision", "fid"):
            raise ValueError(f"unknown Inception-v3 variant {variant!r}; valid: torchvision, fid")
        fid = variant == "fid"
        self.variant = variant
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32, fid=fid)
        self.Mixed_5c = InceptionA(256, 64, fid=fid)
        self.Mixed_5d = InceptionA(288, 64, fid=fid)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128, fid=fid)
        self.Mixed_6c = InceptionC(768, 160, fid=fid)
        self.Mixed_6d = InceptionC(768, 160, fid=fid)
        self.Mixed_6e = InceptionC(768, 192, fid=fid)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg_valid" if fid else "avg")
        self.Mixed_7c = InceptionE(2048, pool="max" if fid else "avg")
        self.fc = nn.Linear(POOL_FEATURES, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, 299, 299) in [-1, 1] -> (N, 2048) pool features."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class InceptionFeatures(nn.Module):
    """Images as the pipeline has them -> Inception pool features.

    Accepts uint8 (N, C, H, W) in [0, 255] or floats in [-1, 1]; grey images are repeated to 3 channels and
    every image is resized to 299x299 bilinearly (align_corners=False, as pytorch-fid does).
    `num_features` lets torchmetrics use this module as a custom `feature` extractor.
    """

    num_features = POOL_FEATURES

    def __init__(self, net: InceptionV3, *, weights_sha256: str = "") -> None:
        super().__init__()
        self.net = net.eval()
        self.weights_sha256 = weights_sha256

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)  # batch norm always uses the file's running statistics

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return self.net(x)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_inception(path: str | Path) -> InceptionFeatures:
    """Inception-v3 from a local state-dict file (torchvision's or pytorch-fid's), loaded with weights_only=True.

    The variant is read from the file: 1008 output classes is the TF FID graph, anything else torchvision's.
    The auxiliary classifier's weights, if present, are ignored; every other key must match exactly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception-v3 weights file {path} does not exist. {WEIGHTS_HELP}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise ValueError(f"{path} is not an Inception-v3 state dict (no 'fc.weight'). {WEIGHTS_HELP}")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("AuxLogits.")}
    num_classes = int(state["fc.weight"].shape[0])
    net = InceptionV3(num_classes=num_classes, variant="fid" if num_classes == 1008 else "torchvision")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit Inception-v3: {str(exc).splitlines()[0]}") from None
    return InceptionFeatures(net, weights_sha256=file_sha256(path))
