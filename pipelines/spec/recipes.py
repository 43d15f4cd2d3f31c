"""Recipes: named functions that return a complete `TrainSpec`; CLI `key=value` overrides go on top."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from gan_models import cyclegan, dcgan, pix2pix, stargan, text2img, vanilla
from pipelines.spec.config import DataConfig, LoopConfig, ScaleConfig, TrackConfig, TrainSpec


def dcgan_paper(dataset: str = "mnist5k") -> TrainSpec:
    """DCGAN with the paper's settings (Adam 2e-4, β1 0.5, batch 128 in total, BCE); image size from the data.

    Arithmetic, not the model: bf16 autocast where the device has it natively (2.06x fp32 at 64 px, batch 64 on an
    AVX512-BF16 CPU; compiling added nothing on top: BENCHMARKS.md, "Eager vs compiled")."""
    return TrainSpec(
        family="dcgan",
        model=dcgan.Config(image_size=32, channels=1),
        data=DataConfig(dataset=dataset, batch_size=64),
        loop=LoopConfig(steps=5000, precision="bf16"),
        scale=ScaleConfig(workers=2),
    )


def vanilla_paper(dataset: str = "mnist5k") -> TrainSpec:
    """Goodfellow et al. 2014's MLP GAN with the paper's settings."""
    return TrainSpec(
        family="vanilla",
        model=vanilla.Config(image_size=32, channels=1),
        data=DataConfig(dataset=dataset, batch_size=100),
        loop=LoopConfig(steps=5000),
        scale=ScaleConfig(workers=1),
    )


def dcgan_mnist5k_demo(dataset: str = "mnist5k") -> TrainSpec:
    """The `make demo` recipe: recognisable digits from 4,000 training images on 2 CPU cores in ~6 minutes.

    Beyond the paper, each measured on mnist5k (BENCHMARKS.md): narrower networks (ngf=ndf=32, the 32x32
    variant) to fit the time; Adam lr 8e-4 instead of 2e-4 (faster early progress); DiffAugment translation,
    which keeps D from memorising 4,000 images; a lazy R1 penalty (γ 0.1 every 4th D step), which steadies D;
    one-sided label smoothing (real target 0.9); an EMA of G's weights, which is what gets exported; and bf16
    autocast where the CPU has it natively (1.5x faster with AVX512-BF16; in one run each, its confident share
    came within 0.03 of float32's).
    """
    return TrainSpec(
        family="dcgan",
        model=dcgan.Config(image_size=32, channels=1, ngf=32, ndf=32, lr_g=8e-4, lr_d=8e-4, augment="translation",
                           real_label=0.9, r1_gamma=0.1, r1_every=4),
        data=DataConfig(dataset=dataset, batch_size=64),
        loop=LoopConfig(steps=6000, log_every=100, checkpoint_every=1000, sample_every=500, eval_every=1000,
                        ema_decay=0.999, ema_start=500, precision="bf16"),
        scale=ScaleConfig(workers=2),
        track=TrackConfig(alias="candidate"),
    )


def pix2pix_paper(dataset: str = "facades") -> TrainSpec:
    """Pix2Pix as the official train defaults: unet_256, 70x70 PatchGAN, λ_L1 100, batch 1, 100 + 100 epochs
    (set loop.steps to 200 x the training-set size for the paper's schedule).

    Arithmetic, not the model: bf16 autocast where native (1.17x-1.28x fp32 eager at unet_128 @128 b1 on an
    AVX512-BF16 CPU, in the contiguous layout that `loop.layout=auto` picks for a fused Adam; compiling is
    slower: BENCHMARKS.md)."""
    return TrainSpec(
        family="pix2pix",
        model=pix2pix.Config(),
        data=DataConfig(dataset=dataset, batch_size=1),
        loop=LoopConfig(steps=80_000, log_every=100, checkpoint_every=2000, sample_every=1000, precision="bf16"),
        scale=ScaleConfig(workers=1),
    )


def cyclegan_paper(dataset: str = "horse2zebra") -> TrainSpec:
    """CycleGAN as the official train defaults: resnet_9blocks, instance norm, lsgan, λ 10 / 10 / 0.5, pool 50,
    batch 1.

    Arithmetic, not the model: bf16 autocast where native (resnet_6 @128 b1 on an AVX512-BF16 CPU, in the
    contiguous layout that `loop.layout=auto` picks for a fused Adam: 1.64x fp32 eager interleaved, 1.80x one
    setting per process; compiling on top was 1.10x interleaved and 0.95x alone, so it stays off:
    BENCHMARKS.md)."""
    return TrainSpec(
        family="cyclegan",
        model=cyclegan.Config(),
        data=DataConfig(dataset=dataset, batch_size=1),
        loop=LoopConfig(steps=200_000, log_every=100, checkpoint_every=2000, sample_every=1000, precision="bf16"),
        scale=ScaleConfig(workers=1),
    )


def stargan_paper(dataset: str = "celeba") -> TrainSpec:
    """StarGAN as the official CelebA defaults: 6 residual blocks, WGAN-GP (λ_gp 10, n_critic 5), λ_cls 1,
    λ_rec 10, Adam 1e-4, batch 16, 200k iterations with linear decay over the last 100k.

    Arithmetic, not the model: bf16 autocast where native (~1.2x fp32 eager at 64 px b16 on an AVX512-BF16
    CPU timed one setting per process, 1.18x-1.74x interleaved, in the contiguous layout that `loop.layout=auto`
    picks for a fused Adam; compiling is slower, the gradient penalty's pass being eager: BENCHMARKS.md)."""
    return TrainSpec(
        family="stargan",
        model=stargan.Config(),
        data=DataConfig(dataset=dataset, batch_size=16),
        loop=LoopConfig(steps=200_000, log_every=100, checkpoint_every=5000, sample_every=1000, precision="bf16"),
        scale=ScaleConfig(workers=1),
    )


def text2img_paper(dataset: str = "cub") -> TrainSpec:
    """GAN-INT-CLS (Reed et al. 2016): matching-aware D, interpolated captions β 0.5, Adam 2e-4 β1 0.5, batch 64."""
    return TrainSpec(
        family="text2img",
        model=text2img.Config(),
        data=DataConfig(dataset=dataset, batch_size=64),
        loop=LoopConfig(steps=100_000, log_every=100, checkpoint_every=5000, sample_every=1000),
        scale=ScaleConfig(workers=1),
    )


def stargan_mnist5k_demo(dataset: str = "mnist5k-attributes-16px") -> TrainSpec:
    """`ganpipe demo --family stargan`: colour, stroke and background changes of coloured digits on 2 CPU cores
    in minutes, keeping the digit. Beyond the paper, each measured on this set (BENCHMARKS.md): 16x16 images and
    narrow networks to fit the time (G 32 channels with 3 residual blocks, D 16 channels with 3 convs); one D
    update per G update (n_critic 1: 5x the paper's G updates in the same iterations; with the paper's 5, G had
    made 300 updates at the end and drew every translation as a coloured blob); lr 3e-4 without decay (2e-4 kept
    the digit ~1,000 iterations later; at 4e-4 one seed of three lost its background inversion late); an
    identity term λ_id 10 (`model.lambda_id`, 0 in the paper: G(x, c') = x for the image's own labels); the
    labels fed again to G's last conv (`model.g_labels_at_output`: the digit is kept sooner); and a keep-the-stroke
    term λ_stroke 10 (`model.lambda_stroke`, gan_models/stroke.py: the L1 between the input's and the
    translation's ink masks; without it the background inversion draws the digit's negative space, which the
    cycle term accepts, and keeps the digit in ~0.07 of those translations), left out for translations that change
    thick or thin (`model.stroke_exempt`: those move ink on purpose, and the term kept G from thinning), which
    instead may not draw ink farther than 1 px from the input's (`model.stroke_exempt_reach`: without a bound,
    thickening merged a faint digit's strokes into a blob, and thick kept the digit in only ~0.7); 4,500
    iterations. The rest (WGAN-GP λ_gp 10, λ_cls 1, λ_rec 10, batch 16) as the paper. Arithmetic: fp32 eager;
    bf16 compiled steps are faster alone (1.25x in `ganpipe bench`) but the demo ran no faster with them
    (BENCHMARKS.md)."""
    return TrainSpec(
        family="stargan",
        model=stargan.Config(image_size=16, g_conv_dim=32, d_conv_dim=16, g_repeat_num=3, d_repeat_num=3,
                             n_critic=1, lambda_id=10.0, lambda_stroke=10.0, stroke_exempt="3,4",
                             stroke_exempt_reach=1, g_labels_at_output=True, g_lr=3e-4, d_lr=3e-4,
                             num_iters_decay=0, num_iters=4500),
        data=DataConfig(dataset=dataset, batch_size=16),
        loop=LoopConfig(steps=4500, log_every=100, checkpoint_every=1000, sample_every=1000, eval_every=1000),
        scale=ScaleConfig(workers=0),
    )


def text2img_mnist5k_demo(dataset: str = "mnist5k-captioned") -> TrainSpec:
    """`ganpipe demo --family text2img`: GAN-INT-CLS on captioned coloured digits, 32x32, on 2 CPU cores in
    minutes. Beyond the paper, each measured on this set (BENCHMARKS.md): narrower networks (ngf=ndf=32);
    DiffAugment translation on every image D sees (without it D wins within a few hundred steps and G draws
    washed-out images); batch norm on G's text projection (unit-norm sentence embeddings otherwise reach G ~100x
    weaker than z, and G ignores the digit); a projection D (the paper's concatenating D learns the colour but not
    the digit in this budget); MSGAN's mode-seeking term at weight 0.02 (without it G draws one image per caption
    whatever z is; heavier weights buy spread with digit accuracy); bf16 autocast where the CPU has it natively.
    The rest (matching-aware D, GAN-INT β 0.5, Adam 2e-4 β1 0.5, batch 64) as the paper."""
    return TrainSpec(
        family="text2img",
        model=text2img.Config(image_size=32, ngf=32, ndf=32, augment="translation", g_proj_bn=True,
                              d_match="projection", ms_weight=0.02),
        data=DataConfig(dataset=dataset, batch_size=64),
        loop=LoopConfig(steps=5000, log_every=100, checkpoint_every=1000, sample_every=1000, eval_every=1000,
                        precision="bf16"),
        scale=ScaleConfig(workers=0),
    )


def pix2pix_edges_demo(dataset: str = "mnist5k-edges") -> TrainSpec:
    """`ganpipe demo --family pix2pix`: Canny edges -> digits on mnist5k at 32 px, 2 CPU workers, a few minutes.

    Beyond the paper: unet_32 (the official U-Net with 5 levels, for 32 px; it has no dropout block), ngf=ndf=32,
    batch 16 per worker (the paper's batch 1 is launch-bound on CPUs), and eval_mode=True (running batch-norm
    statistics at test time), so in-training evaluation, the final evaluation and the registered graph (exported
    in eval mode) compute the same thing. One thread per worker: on a shared 2-core machine more threads per
    process oversubscribe the cores (measured: 5 img/s with 2 threads against ~120 with 1)."""
    return TrainSpec(
        family="pix2pix",
        model=pix2pix.Config(image_size=32, channels=1, g_arch="unet_32", ngf=32, ndf=32, eval_mode=True),
        data=DataConfig(dataset=dataset, batch_size=16),
        loop=LoopConfig(steps=600, log_every=50, checkpoint_every=200, sample_every=200, eval_every=200, threads=1),
        scale=ScaleConfig(workers=2),
        track=TrackConfig(alias="candidate"),
    )


def cyclegan_digits_demo(dataset: str = "digits-mnist5k") -> TrainSpec:
    """`ganpipe demo --family cyclegan`: scikit-learn digits <-> MNIST digits at 32 px, 2 CPU workers.

    Paper losses and weights (lsgan, λ 10/10, identity 0.5, pool 50, instance norm); beyond the paper:
    resnet_6blocks with ngf=ndf=16 and batch 4 per worker to fit a few CPU minutes, one thread per worker."""
    return TrainSpec(
        family="cyclegan",
        model=cyclegan.Config(image_size=32, channels=1, g_arch="resnet_6blocks", ngf=16, ndf=16),
        data=DataConfig(dataset=dataset, batch_size=4),
        loop=LoopConfig(steps=1000, log_every=50, checkpoint_every=250, sample_every=250, eval_every=500, threads=1),
        scale=ScaleConfig(workers=2),
        track=TrackConfig(alias="candidate"),
    )


RECIPES: dict[str, Callable[..., TrainSpec]] = {
    "pix2pix": pix2pix_paper,
    "cyclegan": cyclegan_paper,
    "stargan": stargan_paper,
    "text2img": text2img_paper,
    "dcgan": dcgan_paper,
    "vanilla": vanilla_paper,
    "dcgan-mnist5k-demo": dcgan_mnist5k_demo,
    "stargan-mnist5k-demo": stargan_mnist5k_demo,
    "text2img-mnist5k-demo": text2img_mnist5k_demo,
    "pix2pix-edges-demo": pix2pix_edges_demo,
    "cyclegan-digits-demo": cyclegan_digits_demo,
}


def get_recipe(name: str) -> Callable[..., TrainSpec]:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
    return RECIPES[name]


def with_run_options(spec: TrainSpec, *, steps: int | None = None, workers: int | None = None,
                     seed: int | None = None) -> TrainSpec:  # fmt: skip
    """A recipe's spec with a demo's `--steps`, `--workers` and `--seed` applied (None keeps the recipe's)."""
    loop = {k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None}
    spec = dataclasses.replace(spec, loop=dataclasses.replace(spec.loop, **loop))
    if workers is not None:
        spec = dataclasses.replace(spec, scale=dataclasses.replace(spec.scale, workers=workers))
    return spec
