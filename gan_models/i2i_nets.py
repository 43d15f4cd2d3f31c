"""The image-to-image networks of junyanz/pytorch-CycleGAN-and-pix2pix (`models/networks.py`), shared by Pix2Pix
and CycleGAN: U-Net and ResNet generators, PatchGAN and pixel discriminators, norms, init and LR policies.

Module trees and state-dict keys are the official ones (`model.1.model.3...`, `model.10.conv_block.1...`), so an
official `latest_net_G.pth` loads with `load_state_dict`. Parameter counts of the defaults equal the official
printouts (tests/test_i2i.py). Names: official `--netG` = `g_arch`, `--netD` = `d_arch`, `--n_layers_D` =
`n_layers_d`, `--norm` = `norm`, `--no_dropout` = `not dropout`, `--init_type`/`--init_gain` the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.optim import lr_scheduler

G_ARCHS = ("unet_32", "unet_64", "unet_128", "unet_256", "resnet_6blocks", "resnet_9blocks")
D_ARCHS = ("basic", "n_layers", "pixel")
NORMS = ("batch", "instance", "none")
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")
LR_POLICIES = ("linear", "step", "cosine")
# unet_32/unet_64 are not official names: the official UnetGenerator with num_downs 5/6, for 32/64 px data.
_UNET_DOWNS = {"unet_32": 5, "unet_64": 6, "unet_128": 7, "unet_256": 8}
_RESNET_BLOCKS = {"resnet_6blocks": 6, "resnet_9blocks": 9}

NormFactory = Callable[[int], nn.Module]


def norm_factory(norm: str) -> NormFactory:
    """channels -> norm layer, as the official get_norm_layer.

    batch: BatchNorm2d (affine, running statistics); instance: InstanceNorm2d(affine=False,
    track_running_stats=False), i.e. no parameters and no buffers; none: Identity.
    """
    if norm == "batch":
        return lambda c: nn.BatchNorm2d(c, affine=True, track_running_stats=True)
    if norm == "instance":
        return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    if norm == "none":
        return lambda c: nn.Identity()
    raise ValueError(f"norm={norm!r} is not supported; valid: {', '.join(NORMS)}")


def _conv_bias(norm: str) -> bool:
    # The official `use_bias = norm_layer.func == nn.InstanceNorm2d`: convs before a BatchNorm have no bias
    # (BN's shift replaces it); instance norm (affine=False) keeps it. With norm="none" the official code also
    # ends up without biases (its norm_layer is not a partial of InstanceNorm2d); we keep that quirk.
    return norm == "instance"


# --- generators -----------------------------------------------------------------------------------------


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: x -> [x, up(sub(down(x)))] (a skip connection by concatenation); outermost: no skip.

    down = LeakyReLU(0.2) -> Conv 4x4 s2 -> norm (the outermost has the conv only, the innermost no norm);
    up = ReLU -> ConvTranspose 4x4 s2 -> norm (outermost: -> Tanh), then Dropout(0.5) when `dropout`.
    """

    def __init__(
        self, outer_nc: int, inner_nc: int, *, input_nc: int | None = None, submodule: nn.Module | None = None,
        outermost: bool = False, innermost: bool = False, norm: str = "batch", dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        make_norm, use_bias = norm_factory(norm), _conv_bias(norm)
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        uprelu = nn.ReLU(True)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, uprelu, upconv, make_norm(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, make_norm(inner_nc), submodule, uprelu, upconv, make_norm(outer_nc)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net of `num_downs` stride-2 levels (5: unet_32, 6: unet_64, 7: unet_128, 8: unet_256; the image side must
    be a multiple of 2**num_downs). Channels ngf, 2ngf, 4ngf, then 8ngf; Dropout(0.5) in the num_downs - 5 decoder
    blocks just outside the innermost one (3 for unet_256, 2 for unet_128, 1 for unet_64, none for unet_32), as
    the official builder does."""

    def __init__(self, input_nc: int, output_nc: int, num_downs: int, *, ngf: int = 64, norm: str = "batch",
                 dropout: bool = False) -> None:
        super().__init__()
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, dropout=dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                                             norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class ResnetBlock(nn.Module):
    """x + [pad 1 -> conv 3x3 -> norm -> ReLU -> (Dropout 0.5) -> pad 1 -> conv 3x3 -> norm](x), reflection pad."""

    def __init__(self, dim: int, *, norm: str, dropout: bool) -> None:
        super().__init__()
        make_norm, use_bias = norm_factory(norm), _conv_bias(norm)
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), make_norm(dim),
                                   nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), make_norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Johnson et al.'s transformer net: c7s1-ngf, d2ngf, d4ngf, n_blocks x R4ngf, u2ngf, ungf, c7s1-out + Tanh.

    Reflection padding; two stride-2 downsamplings (image side a multiple of 4) and two transposed-conv
    upsamplings (output_padding 1); the last conv keeps its bias whatever the norm.
    """

    def __init__(self, input_nc: int, output_nc: int, n_blocks: int, *, ngf: int = 64, norm: str = "instance",
                 dropout: bool = False) -> None:
        super().__init__()
        make_norm, use_bias = norm_factory(norm), _conv_bias(norm)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=use_bias), make_norm(ngf),
                                   nn.ReLU(True)]
        for i in range(2):  # downsample
            mult = 2**i
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=use_bias),
                       make_norm(ngf * mult * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm=norm, dropout=dropout) for _ in range(n_blocks)]
        for i in range(2):  # upsample
            mult = 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1,
                                          bias=use_bias),
                       make_norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


# --- discriminators -------------------------------------------------------------------------------------


class NLayerDiscriminator(nn.Module):
    """PatchGAN: n_layers stride-2 4x4 convs (ndf, 2ndf, ... capped at 8ndf), one stride-1 conv, a 1-channel
    stride-1 conv; LeakyReLU 0.2. n_layers=3 is the 70x70 PatchGAN: (N, 1, 30, 30) logits for a 256 input."""

    def __init__(self, input_nc: int, *, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        make_norm, use_bias = norm_factory(norm), _conv_bias(norm)
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1, bias=use_bias),
                       make_norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=use_bias), make_norm(ndf * mult),
                   nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN ("pixelGAN"): one logit per pixel, (N, 1, H, W)."""

    def __init__(self, input_nc: int, *, ndf: int = 64, norm: str = "batch") -> None:
        super().__init__()
        make_norm, use_bias = norm_factory(norm), _conv_bias(norm)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 1, bias=use_bias), make_norm(ndf * 2), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, 1, bias=use_bias),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# --- builders, init ---------------------------------------------------------------------------------------


def init_weights_(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """The official init_weights, in place: conv/linear weights by `init_type`, biases 0; BatchNorm weights
    N(1, gain), biases 0. normal: N(0, gain); xavier: xavier_normal_(gain); kaiming: kaiming_normal_(a=0,
    fan_in); orthogonal: orthogonal_(gain)."""
    if init_type not in INIT_TYPES:
        raise ValueError(f"init_type={init_type!r} is not supported; valid: {', '.join(INIT_TYPES)}")

    def init(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if init_type == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)

    return net.apply(init)


def check_g_arch(g_arch: str, image_size: int) -> None:
    """A ValueError unless `g_arch` is known and its downsamplings divide `image_size`."""
    if g_arch not in G_ARCHS:
        raise ValueError(f"g_arch={g_arch!r} is not supported; valid: {', '.join(G_ARCHS)}")
    factor = 2 ** _UNET_DOWNS[g_arch] if g_arch in _UNET_DOWNS else 4
    if image_size < factor or image_size % factor:
        raise ValueError(f"g_arch={g_arch!r} needs image_size a multiple of {factor}, got {image_size}")


def define_g(g_arch: str, input_nc: int, output_nc: int, *, ngf: int, norm: str, dropout: bool,
             init_type: str = "normal", init_gain: float = 0.02) -> nn.Module:
    """The official define_G: a generator by name, initialised."""
    if g_arch in _UNET_DOWNS:
        net: nn.Module = UnetGenerator(input_nc, output_nc, _UNET_DOWNS[g_arch], ngf=ngf, norm=norm, dropout=dropout)
    elif g_arch in _RESNET_BLOCKS:
        net = ResnetGenerator(input_nc, output_nc, _RESNET_BLOCKS[g_arch], ngf=ngf, norm=norm, dropout=dropout)
    else:
        raise ValueError(f"g_arch={g_arch!r} is not supported; valid: {', '.join(G_ARCHS)}")
    return init_weights_(net, init_type, init_gain)


def define_d(d_arch: str, input_nc: int, *, ndf: int, n_layers: int = 3, norm: str, init_type: str = "normal",
             init_gain: float = 0.02) -> nn.Module:
    """The official define_D: basic = 70x70 PatchGAN (3 layers), n_layers = PatchGAN of `n_layers`, pixel."""
    if d_arch == "basic":
        net: nn.Module = NLayerDiscriminator(input_nc, ndf=ndf, n_layers=3, norm=norm)
    elif d_arch == "n_layers":
        net = NLayerDiscriminator(input_nc, ndf=ndf, n_layers=n_layers, norm=norm)
    elif d_arch == "pixel":
        net = PixelDiscriminator(input_nc, ndf=ndf, norm=norm)
    else:
        raise ValueError(f"d_arch={d_arch!r} is not supported; valid: {', '.join(D_ARCHS)}")
    return init_weights_(net, init_type, init_gain)


# --- learning-rate policies ---------------------------------------------------------------------------------


def linear_decay(epoch: int, *, n_epochs: int, n_epochs_decay: int, epoch_count: int = 1) -> float:
    """The official "linear" rule: factor 1 for n_epochs epochs, then linear towards 0 over n_epochs_decay.

    `epoch` is the number of scheduler steps taken (LambdaLR's last_epoch); `epoch_count` the official
    starting epoch (1, or the epoch a run continues from when resumed by number instead of by state).
    """
    return 1.0 - max(0, epoch + epoch_count - n_epochs) / float(n_epochs_decay + 1)


def build_scheduler(opt: torch.optim.Optimizer, *, policy: str, n_epochs: int, n_epochs_decay: int,
                    lr_decay_iters: int = 50, epoch_count: int = 1) -> lr_scheduler.LRScheduler:
    """The official get_scheduler: linear -> LambdaLR(linear_decay); step -> StepLR(lr_decay_iters, γ 0.1);
    cosine -> CosineAnnealingLR(T_max=n_epochs, eta_min 0). Stepped once per epoch by the caller.

    Its state_dict holds numbers only (a LambdaLR does not save a plain function), so it round-trips through
    `torch.load(weights_only=True)`; rebuild with the same config, then load_state_dict.
    """
    if policy == "linear":
        def rule(epoch: int) -> float:
            return linear_decay(epoch, n_epochs=n_epochs, n_epochs_decay=n_epochs_decay, epoch_count=epoch_count)

        return lr_scheduler.LambdaLR(opt, lr_lambda=rule)
    if policy == "step":
        return lr_scheduler.StepLR(opt, step_size=lr_decay_iters, gamma=0.1)
    if policy == "cosine":
        return lr_scheduler.CosineAnnealingLR(opt, T_max=n_epochs, eta_min=0)
    raise ValueError(f"lr_policy={policy!r} is not supported; valid: {', '.join(LR_POLICIES)}")



# --- inference mode -------------------------------------------------------------------------------------------


@contextmanager
def inference(g: nn.Module, *, eval_mode: bool) -> Iterator[nn.Module]:
    """G as the official test.py runs it, restored on exit.

    eval_mode=True (`--eval`): eval() — no dropout, BatchNorm running statistics. eval_mode=False (the official
    default): train mode — dropout on, BatchNorm normalises with the batch's own statistics — with BatchNorm
    momentum 0, so sampling leaves the running statistics (and the batch count) exactly as training left them.
    Instance norm without dropout (CycleGAN's default) computes the same in both modes.
    """
    was_training = g.training
    norms = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    g.train(not eval_mode)
    if not eval_mode:
        for m in norms:
            m.momentum = 0.0
    try:
        yield g
    finally:
        for m, (momentum, count) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)
        g.train(was_training)
