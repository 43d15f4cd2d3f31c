"""Which arithmetic a training step runs in: float32, or bfloat16 autocast where the hardware has it natively.

Imports neither Ray nor MLflow: `ganpipe bench` and the plain loop use it on a bare GPU box too.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from pipelines.spec.config import PRECISIONS


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls/convolutions run in hardware: CUDA GPUs with bf16, and CPUs with AVX512-BF16 or
    AMX (oneDNN's bf16 kernels; elsewhere torch emulates bf16 on the CPU, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `loop.precision` on `device`; None = plain float32.

    "auto" keeps float32 on CPUs (recipes measured in float32 give the same numbers there) and uses bf16 on GPUs
    that have it. "bf16" uses it wherever the device runs it natively, CPUs included, and falls back to float32
    with a warning elsewhere: emulated bf16 would be slower than float32 and no more accurate.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and native_bf16(device) else None
    if not native_bf16(device):
        warnings.warn(f"precision=bf16: this {device.type} has no native bf16 (AVX512-BF16, AMX or a bf16 GPU), "
                      "so training runs in float32", stacklevel=2)
        return None
    return torch.bfloat16


def wants_channels_last(device: torch.device, amp_dtype: torch.dtype | None, layout: str = "auto", *,
                        fused_optimizer: bool = False, compiled: bool = False) -> bool:
    """NHWC weights and activations for `loop.layout`. "auto" picks them on GPUs (cuDNN's fast layout) and with
    bf16 on CPUs (oneDNN's bf16 convolutions run fastest in it: measured on DCGAN, BENCHMARKS.md) unless the
    optimizer is fused there: torch's CPU fused Adam works on contiguous tensors and copies channels_last
    weights, gradients and moments in and out on every step (half of a pix2pix bf16 step at batch 1).
    A `compiled` run on a GPU stays contiguous: Inductor's convolution backward rejected channels_last strides
    there (DCGAN on an H200, torch 2.11: BENCHMARKS.md, "the reader feeding a DCGAN step on one H200")."""
    if layout != "auto":  # validated where it is read: LoopConfig, bench's Setting
        return layout == "channels_last"
    if device.type == "cuda":
        return not compiled
    return amp_dtype is not None and not fused_optimizer


def fused(opts: dict[str, torch.optim.Optimizer]) -> bool:
    """Whether any of a run's optimizers runs torch's fused kernel (pix2pix, CycleGAN and StarGAN build them so)."""
    return any(opt.defaults.get("fused") for opt in opts.values())


def to_channels_last(net: nn.Module) -> nn.Module:
    """`net`'s weights in channels_last, and a filter for DDP's warning about them: a weight with one channel in
    dim 1 (a grey image's first conv, a last transposed conv to one channel) is the same memory in either
    layout, but the strides autograd gives its gradient differ from the parameter's whichever one it has, so
    DDP warns that "grad strides do not match bucket view strides" and copies that small gradient. Harmless."""
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return net.to(memory_format=torch.channels_last)
