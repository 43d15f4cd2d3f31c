"""Building blocks and helpers shared by several GAN families: initialisation, parameter counts, maxout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def init_normal_(module: nn.Module, std: float = 0.02) -> nn.Module:
    """DCGAN initialisation (Radford et al. 2016 sec. 4), in place; returns `module`.

    Conv, ConvTranspose and Linear weights ~ N(0, std), their biases (if any) 0; BatchNorm weights
    ~ N(1, std), biases 0 — the official DCGAN `weights_init` and pix2pix/CycleGAN's init_type="normal".
    """

    def init(m: nn.Module) -> None:
        if isinstance(m, (*_CONV, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _BATCH_NORM) and m.affine:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)

    return module.apply(init)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not), the figure official repos print for their networks."""
    return sum(p.numel() for p in module.parameters())


class Maxout(nn.Module):
    """Maxout layer (Goodfellow et al. 2013): a Linear to units * pieces outputs, then the max over pieces.

    Output unit u is the max of Linear outputs u*pieces ... u*pieces + pieces-1 (pylearn2 groups pieces with a
    stride instead, which is the same function up to a permutation of the weights).
    """

    def __init__(self, in_features: int, *, units: int, pieces: int) -> None:
        super().__init__()
        if units < 1 or pieces < 1:
            raise ValueError(f"Maxout needs units >= 1 and pieces >= 1, got units={units}, pieces={pieces}")
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(in_features, units * pieces)

    def forward(self, x: Tensor) -> Tensor:
        z = self.linear(x)
        return z.view(*z.shape[:-1], self.units, self.pieces).amax(dim=-1)

    def extra_repr(self) -> str:
        return f"units={self.units}, pieces={self.pieces}"


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """The network without its DDP wrapper and with requires_grad off, for a pass that trains someone else.

    In a G step, G's gradient must flow through D's activations, but D's own weight gradients are wasted
    work, and under DDP they would also be all-reduced. Calling the inner module keeps DDP out of this pass
    entirely (no reducer is armed, so toggling requires_grad is safe); the flags are restored on exit.
    """
    inner = getattr(module, "module", module)
    flags = [p.requires_grad for p in inner.parameters()]
    inner.requires_grad_(False)
    try:
        yield inner
    finally:
        for p, flag in zip(inner.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def convert_sync_batchnorm(nets: dict[str, nn.Module], *, world_size: int) -> dict[str, nn.Module]:
    """Every BatchNorm of `nets` as SyncBatchNorm when training on several processes; unchanged otherwise.

    Call it after building and before wrapping in DDP (SyncBatchNorm needs an initialised process group only at
    its first training forward). Networks without BatchNorm (instance norm, spectral norm) come back as they
    are; weights, buffers and state-dict keys are kept, so checkpoints load either way. With batch 1 per rank
    (pix2pix's default) the statistics then cover the global batch, as on one device with batch = world size.
    """
    if world_size <= 1:
        return dict(nets)
    out = {}
    for name, net in nets.items():
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        out[name] = nn.SyncBatchNorm.convert_sync_batchnorm(net) if has_bn else net
    return out
