"""StarGAN (Choi et al. 2018): one image-to-image generator for many domains, as the official yunjey/stargan.

Networks, losses, optimiser and schedule follow the official `model.py` / `solver.py`; each default is a
`Config` field. Departures, each small and stated where it happens: the generator's instance norm uses
per-image statistics in eval mode too (see `InstanceNorm`), the D-step fake is reused by the G step of the
same iteration (the official code recomputes the identical tensor), and the learning-rate decay reaches 0
as the paper says (the official decrement removes only 0.1%; `lr_decay_to_zero=False` reproduces it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import losses, stroke
from ._checks import in_unit_interval, one_of, positive
from .family import ITERATION_KEY, Batch, Family, Nets, Optimizers, iterations_done, set_iterations_done
from .latent import make_grid
from .layers import frozen

LABEL_MODES = ("multi", "exclusive")


@dataclass(frozen=True, kw_only=True)
class Config:
    """StarGAN hyperparameters; defaults are the official CelebA run's (main.py), 128x128, 5 attributes."""

    image_size: int = 128  # official: 128 (CelebA crop 178 resized); needs image_size % 2**d_repeat_num == 0
    channels: int = 3
    c_dim: int = 5  # attributes (multi) or domains (exclusive); official selected_attrs: Black_Hair,
    #                 Blond_Hair, Brown_Hair, Male, Young
    label_mode: str = "multi"  # "multi": multi-hot attributes, BCE (CelebA); "exclusive": one domain each, CE (RaFD)
    exclusive_groups: str = "0,1,2"  # attribute indices of which at most one may be on, e.g. hair colours;
    #                                  groups separated by ";" ("0,1,2;5,6"), "" for none; ignored when exclusive
    g_conv_dim: int = 64
    d_conv_dim: int = 64
    g_repeat_num: int = 6  # residual blocks in G
    d_repeat_num: int = 6  # strided convs in D
    lambda_cls: float = 1.0  # λ_cls
    lambda_rec: float = 10.0  # λ_rec
    lambda_gp: float = 10.0  # λ_gp
    lambda_id: float = 0.0  # beyond the paper (0 = the paper): weight of an identity term E[|G(x, c') - x|_1],
    #                        CycleGAN's λ_identity for StarGAN: translating to the image's own labels keeps it
    lambda_stroke: float = 0.0  # beyond the paper (0 = the paper): weight of E[|m(x) - m(G(x, c))|_1] with m the
    #                             stroke mask of gan_models/stroke.py (ink of strokes on a black or white
    #                             background): keeps the digit where it was under colour and background changes
    stroke_exempt: str = ""  # attribute indices ("3,4") whose change leaves a translation out of the stroke term:
    #                          changes meant to move ink (thick, thin), which the term would otherwise resist
    stroke_exempt_reach: int = -1  # >= 0: those exempt translations still may not draw ink farther than this many
    #                                pixels from the input's ink (stroke.ink_outside, same λ); -1: no term for them
    g_labels_at_output: bool = False  # beyond the paper: c is concatenated again before G's last conv (see Generator)
    g_label_norm: bool = False  # beyond the paper: each of G's instance norms takes its scale and shift from c
    #                             (conditional instance norm, see LabelNorm); measured on the demo set, it did not
    #                             keep the digit under the background inversion (BENCHMARKS.md)
    n_critic: int = 5  # D updates per G update
    g_lr: float = 1e-4
    d_lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    num_iters: int = 200_000  # the run's length in iterations (one D step each), for the lr schedule
    num_iters_decay: int = 100_000  # decay the lr over the last this many iterations; 0 = no decay here
    lr_update_step: int = 1000  # the lr changes every this many iterations during the decay
    lr_decay_to_zero: bool = True  # paper: linear to 0; False: the official code's lr0/num_iters_decay steps

    def __post_init__(self) -> None:
        one_of("label_mode", self.label_mode, LABEL_MODES)
        one_of("channels", self.channels, (1, 3))
        positive(image_size=self.image_size, c_dim=self.c_dim, g_conv_dim=self.g_conv_dim,
                 d_conv_dim=self.d_conv_dim, d_repeat_num=self.d_repeat_num, n_critic=self.n_critic,
                 g_lr=self.g_lr, d_lr=self.d_lr, num_iters=self.num_iters, lr_update_step=self.lr_update_step)
        in_unit_interval(beta1=self.beta1, beta2=self.beta2)
        if self.g_repeat_num < 0 or self.num_iters_decay < 0 or min(self.lambda_cls, self.lambda_rec,
                                                                     self.lambda_gp, self.lambda_id,
                                                                     self.lambda_stroke) < 0:
            raise ValueError("g_repeat_num, num_iters_decay and the λ weights must be >= 0")
        if self.num_iters_decay > self.num_iters:
            raise ValueError(f"num_iters_decay={self.num_iters_decay} exceeds num_iters={self.num_iters}")
        if self.image_size % max(4, 2**self.d_repeat_num):
            raise ValueError(f"image_size={self.image_size} must be a multiple of 2**d_repeat_num="
                             f"{2**self.d_repeat_num} (and of 4); valid e.g. {2**self.d_repeat_num * 2}")
        groups(self)  # parses and checks exclusive_groups
        stroke_exempt(self)
        if self.stroke_exempt_reach < -1:
            raise ValueError(f"stroke_exempt_reach must be -1 (off) or a reach in pixels >= 0; got "
                             f"{self.stroke_exempt_reach}")
        if self.stroke_exempt_reach >= 0 and not stroke_exempt(self):
            raise ValueError("stroke_exempt_reach bounds the translations that stroke_exempt leaves out of the "
                             "stroke term; set stroke_exempt too (e.g. '3,4')")


def groups(cfg: Config) -> tuple[tuple[int, ...], ...]:
    """cfg.exclusive_groups parsed: "0,1,2;5,6" -> ((0, 1, 2), (5, 6)); () in exclusive-domain mode."""
    if cfg.label_mode == "exclusive" or not cfg.exclusive_groups.strip():
        return ()
    try:
        parsed = tuple(tuple(int(i) for i in g.split(",")) for g in cfg.exclusive_groups.split(";"))
    except ValueError:
        raise ValueError(f"exclusive_groups={cfg.exclusive_groups!r}: want indices like '0,1,2;5,6'") from None
    flat = [i for g in parsed for i in g]
    if any(len(g) < 2 for g in parsed) or len(set(flat)) != len(flat) or not all(0 <= i < cfg.c_dim for i in flat):
        raise ValueError(f"exclusive_groups={cfg.exclusive_groups!r}: groups need >= 2 distinct indices in "
                         f"[0, {cfg.c_dim}) and may not overlap")
    return parsed


def stroke_exempt(cfg: Config) -> tuple[int, ...]:
    """cfg.stroke_exempt parsed: "3,4" -> (3, 4); () for none."""
    try:
        idx = tuple(int(i) for i in cfg.stroke_exempt.split(",") if i.strip())
    except ValueError:
        raise ValueError(f"stroke_exempt={cfg.stroke_exempt!r}: want attribute indices like '3,4'") from None
    if not all(0 <= i < cfg.c_dim for i in idx):
        raise ValueError(f"stroke_exempt={cfg.stroke_exempt!r}: indices must be in [0, {cfg.c_dim})")
    return idx


# --- networks ------------------------------------------------------------------------------------------


class InstanceNorm(nn.InstanceNorm2d):
    """nn.InstanceNorm2d(affine=True, track_running_stats=True), as the official code builds it, that
    normalises with each image's own statistics in eval mode too.

    The official code never calls G.eval(): its samples and test translations use per-image statistics and the
    running averages it tracks are never read. PyTorch's eval mode would read them; this module keeps the
    official outputs in eval mode and in the exported generator, with the same parameters and state-dict keys.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=True, track_running_stats=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return super().forward(x)  # per-image statistics; also updates the (unread) running averages
        return F.instance_norm(x, None, None, self.weight, self.bias, use_input_stats=True, eps=self.eps)


class LabelNorm(nn.Module):
    """Conditional instance norm (Dumoulin et al. 2017, "A learned representation for artistic style"), beyond
    the StarGAN paper: per-image normalisation without running statistics, then a scale γ(c) and shift β(c)
    predicted from the labels by one linear layer, at γ = 1 and β = 0 for every c at initialisation.

    Why: in the official G, c enters as constant channels before a conv and an instance norm; a conv of a
    constant is constant over the image (but for the zero-padded border) and the norm subtracts it, and an
    additive offset cannot flip a feature's sign, which a change like a background inversion needs. γ(c) acts
    multiplicatively on every feature map. Called as norm(x, c) (`_run` passes c along).
    """

    def __init__(self, num_features: int, c_dim: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.film = nn.Linear(c_dim, 2 * num_features)
        nn.init.zeros_(self.film.weight)
        with torch.no_grad():
            self.film.bias.copy_(torch.cat([torch.ones(num_features), torch.zeros(num_features)]))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        gamma, beta = self.film(c.to(x.dtype)).chunk(2, dim=1)
        return F.instance_norm(x, eps=1e-5) * gamma[:, :, None, None] + beta[:, :, None, None]


def _run(layers: nn.Sequential, x: Tensor, c: Tensor) -> Tensor:
    """`layers`(x), passing the labels c to the modules that take them (LabelNorm, ResidualBlock). An explicit
    argument rather than state set on the modules, so the generator exports as a pure function of (x, c)."""
    for layer in layers:
        x = layer(x, c) if isinstance(layer, (LabelNorm, ResidualBlock)) else layer(x)
    return x


def _norm(dim: int, c_dim: int | None) -> nn.Module:
    """The official InstanceNorm, or a LabelNorm when G is built with label_norm (c_dim given)."""
    return InstanceNorm(dim) if c_dim is None else LabelNorm(dim, c_dim)


class ResidualBlock(nn.Module):
    """x + (conv3x3 -> IN -> ReLU -> conv3x3 -> IN)(x), the official bottleneck block; `label_c_dim`: its norms
    are LabelNorms over that many labels."""

    def __init__(self, dim: int, label_c_dim: int | None = None) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False), _norm(dim, label_c_dim), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False), _norm(dim, label_c_dim),
        )

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return x + (self.main(x) if c is None else _run(self.main, x, c))


class Generator(nn.Module):
    """G(x, c): image (n, C, H, W) in [-1, 1] and target labels c (n, c_dim) -> translated image.

    c is replicated spatially and concatenated with x; 7x7 conv, two stride-2 downsamplings, `repeat_num`
    residual blocks, two stride-2 upsamplings, 7x7 conv, tanh. State-dict keys as the official Generator.

    labels_at_output (beyond the paper; off by default): c is concatenated again before the last 7x7 conv
    (layers `out.*`). Every block of the official G ends in an instance norm, which removes each channel's
    per-image mean, so a change of the whole image's level (a black background turned white) has to be drawn
    from spatial features; c at the last conv gives it a per-image offset directly.

    label_norm (beyond the paper; off by default): every instance norm is a LabelNorm, its scale and shift
    predicted from c (keys `*.film.*` in place of the norms' weight, bias and running statistics).
    """

    def __init__(self, *, conv_dim: int, c_dim: int, repeat_num: int, channels: int,
                 labels_at_output: bool = False, label_norm: bool = False) -> None:
        super().__init__()
        lc = c_dim if label_norm else None
        layers: list[nn.Module] = [
            nn.Conv2d(channels + c_dim, conv_dim, 7, 1, 3, bias=False), _norm(conv_dim, lc), nn.ReLU(inplace=True)
        ]
        dim = conv_dim
        for _ in range(2):  # down-sampling
            layers += [nn.Conv2d(dim, dim * 2, 4, 2, 1, bias=False), _norm(dim * 2, lc), nn.ReLU(inplace=True)]
            dim *= 2
        layers += [ResidualBlock(dim, lc) for _ in range(repeat_num)]  # bottleneck
        for _ in range(2):  # up-sampling
            layers += [nn.ConvTranspose2d(dim, dim // 2, 4, 2, 1, bias=False), _norm(dim // 2, lc),
                       nn.ReLU(inplace=True)]
            dim //= 2
        last: list[nn.Module] = [nn.Conv2d(dim + c_dim * labels_at_output, channels, 7, 1, 3, bias=False), nn.Tanh()]
        self.labels_at_output, self.label_norm = labels_at_output, label_norm
        if labels_at_output:
            self.main, self.out = nn.Sequential(*layers), nn.Sequential(*last)
        else:  # the official layout and state-dict keys
            self.main = nn.Sequential(*layers, *last)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        # The official `c.view(...)` breaks under channels_last; indexing + expand is the same replication.
        c_map = c.to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        xc = torch.cat([x, c_map], dim=1)
        h = _run(self.main, xc, c) if self.label_norm else self.main(xc)
        return self.out(torch.cat([h, c_map], dim=1)) if self.labels_at_output else h


class Discriminator(nn.Module):
    """D(x) -> (D_src: PatchGAN critic map (n, 1, h, w), D_cls: domain logits (n, c_dim)).

    `repeat_num` 4x4 stride-2 convs with biases and LeakyReLU 0.01, no normalisation (WGAN-GP); then a 3x3
    conv for D_src and an (image_size / 2**repeat_num)-square conv for D_cls. Keys as the official D.
    """

    def __init__(self, *, image_size: int, conv_dim: int, c_dim: int, repeat_num: int, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01)]
        dim = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(dim, dim * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
            dim *= 2
        self.main = nn.Sequential(*layers)
        self.conv1 = nn.Conv2d(dim, 1, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(dim, c_dim, image_size // 2**repeat_num, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.main(x)
        return self.conv1(h), self.conv2(h).flatten(1)


def build(cfg: Config) -> Nets:
    """{"G": Generator, "D": Discriminator} with PyTorch's default initialisation, as the official code."""
    if not isinstance(cfg, Config):  # field values were already checked by Config.__post_init__
        raise TypeError(f"stargan.build needs a stargan.Config, got {type(cfg).__name__}")
    g = Generator(conv_dim=cfg.g_conv_dim, c_dim=cfg.c_dim, repeat_num=cfg.g_repeat_num, channels=cfg.channels,
                  labels_at_output=cfg.g_labels_at_output, label_norm=cfg.g_label_norm)
    d = Discriminator(image_size=cfg.image_size, conv_dim=cfg.d_conv_dim, c_dim=cfg.c_dim,
                      repeat_num=cfg.d_repeat_num, channels=cfg.channels)
    return {"G": g, "D": d}


def build_optimizers(cfg: Config, nets: Nets) -> Optimizers:
    """Adam lr 1e-4, betas (0.5, 0.999) for each; D's first param group also carries the iteration counter.

    fused=True: the same Adam update in one kernel per step. On CPU PyTorch's default is a Python loop over
    tensors, which took 524 ms per step of D's 44.7M parameters against 119 ms fused (2 threads, torch 2.13).
    """
    betas = (cfg.beta1, cfg.beta2)
    opt_d = torch.optim.Adam(nets["D"].parameters(), lr=cfg.d_lr, betas=betas, fused=True)
    opt_d.param_groups[0][ITERATION_KEY] = 0
    return {"G": torch.optim.Adam(nets["G"].parameters(), lr=cfg.g_lr, betas=betas, fused=True), "D": opt_d}


# --- labels --------------------------------------------------------------------------------------------


def make_groups_valid(labels: Tensor, cfg: Config, *, generator: torch.Generator | None = None) -> Tensor:
    """A copy of multi-hot `labels` (n, c_dim) where no exclusive group has more than one attribute on.

    A row with several on in a group (CelebA has images tagged with two hair colours) keeps one of them,
    chosen uniformly; rows already valid are unchanged. Randomness is drawn for every row, so a given
    `generator` state always gives the same result.
    """
    out = labels.clone()
    for idx in groups(cfg):
        cols = torch.tensor(idx, device=labels.device)
        on = labels.index_select(1, cols) > 0.5
        dev = generator.device if generator is not None else labels.device
        keys = torch.rand(on.shape, generator=generator, device=dev).to(labels.device).masked_fill(~on, -1.0)
        one = F.one_hot(keys.argmax(1), len(idx)).to(labels.dtype)
        clash = on.sum(1, keepdim=True) > 1
        out[:, cols] = torch.where(clash, one, labels.index_select(1, cols))
    return out


def sample_targets(labels: Tensor, cfg: Config, *, generator: torch.Generator | None = None) -> Tensor:
    """Target labels c_trg for a batch: its own labels in a random order (official: label_org[randperm]),
    with exclusive groups made valid (`make_groups_valid`)."""
    dev = generator.device if generator is not None else labels.device
    perm = torch.randperm(labels.shape[0], generator=generator, device=dev).to(labels.device)
    return make_groups_valid(labels[perm], cfg, generator=generator)


def single_flips(labels: Tensor, cfg: Config) -> list[Tensor]:
    """One target per attribute, the paper's figure columns (official `create_labels`): an attribute in an
    exclusive group is switched on and the rest of its group off; any other attribute is flipped. In
    exclusive-domain mode, target i is domain i for every row."""
    n = labels.shape[0]
    if cfg.label_mode == "exclusive":
        eye = torch.eye(cfg.c_dim, dtype=labels.dtype, device=labels.device)
        return [eye[i].expand(n, -1) for i in range(cfg.c_dim)]
    group_of = {i: g for g in groups(cfg) for i in g}
    targets = []
    for i in range(cfg.c_dim):
        t = labels.clone()
        if i in group_of:
            t[:, list(group_of[i])] = 0
            t[:, i] = 1
        else:
            t[:, i] = 1 - t[:, i]
        targets.append(t)
    return targets


def set_attributes(
    labels: Tensor, settings: Mapping[str, int | bool], *, attr_names: Sequence[str], cfg: Config
) -> Tensor:
    """Target labels from `labels` (n, c_dim) with named attributes set, e.g. {"Blond_Hair": 1, "Male": 0}.

    Switching on an attribute of an exclusive group switches the rest of its group off (in exclusive-domain
    mode, all other domains). Unknown names, values other than 0/1, two attributes of one group both set to
    1, or switching a domain off in exclusive mode are ValueErrors.
    """
    if len(attr_names) != cfg.c_dim:
        raise ValueError(f"{len(attr_names)} attribute names for c_dim={cfg.c_dim}")
    index = {name: i for i, name in enumerate(attr_names)}
    group_of = {i: g for g in groups(cfg) for i in g}
    if cfg.label_mode == "exclusive":
        group_of = {i: tuple(range(cfg.c_dim)) for i in range(cfg.c_dim)}
    out = labels.clone()
    switched_on: dict[tuple[int, ...], str] = {}
    for name, value in settings.items():
        if name not in index:
            raise ValueError(f"unknown attribute {name!r}; valid: {', '.join(attr_names)}")
        if value not in (0, 1):
            raise ValueError(f"{name}={value!r}: attribute values are 0 or 1")
        i = index[name]
        group = group_of.get(i)
        if group is not None and value == 1:
            if group in switched_on:
                raise ValueError(f"{switched_on[group]} and {name} are exclusive; set at most one of them to 1")
            switched_on[group] = name
            out[:, list(group)] = 0
        elif group is not None and cfg.label_mode == "exclusive":
            raise ValueError(f"{name}=0: in exclusive-domain mode choose a domain by setting one to 1")
        out[:, i] = float(value)
    return out


def classification_loss(logits: Tensor, target: Tensor, label_mode: str) -> Tensor:
    """The official D_cls loss: BCE summed over attributes and averaged over the batch ("multi"), or
    cross-entropy against the one-hot target's index ("exclusive")."""
    logits = losses._f32(logits)
    if label_mode == "multi":
        bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="sum")
        return bce / logits.shape[0]
    return F.cross_entropy(logits, target.argmax(1))


# --- the family interface ------------------------------------------------------------------------------


def example_batch(
    cfg: Config, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """A synthetic `attributes` batch: noise images in [-1, 1], "attrs" (n, c_dim) float multi-hot (valid
    groups) or one-hot (exclusive), and "label": the domain index when exclusive, else 0."""
    images = torch.rand(n, cfg.channels, cfg.image_size, cfg.image_size, generator=generator, device=device) * 2 - 1
    if cfg.label_mode == "exclusive":
        label = torch.randint(cfg.c_dim, (n,), generator=generator, device=device)
        attrs = F.one_hot(label, cfg.c_dim).float()
    else:
        attrs = make_groups_valid((torch.rand(n, cfg.c_dim, generator=generator, device=device) < 0.5).float(),
                                  cfg, generator=generator)
        label = torch.zeros(n, dtype=torch.long, device=device)
    return {"image": images, "attrs": attrs, "label": label}


def generator_inputs(
    cfg: Config,
    batch: Batch | None,
    n: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """(x, c): the batch's first n images and target labels drawn for them (`sample_targets`)."""
    if batch is None:
        raise ValueError("stargan translates images: generator_inputs needs a batch with 'image' and 'attrs'")
    x, labels = batch["image"][:n], batch["attrs"][:n]
    if device is not None:
        x, labels = x.to(device), labels.to(device)
    return x, sample_targets(labels, cfg, generator=generator)


@torch.no_grad()
def sample_grid(
    g_net: nn.Module, batch: Batch, cfg: Config, generator: torch.Generator | None = None, *, rows: int = 8
) -> Tensor:
    """The paper's figure: each of the first `rows` inputs, then its translation by every single-attribute
    change (`single_flips`), one input per grid row. Computed in eval mode; `generator` is unused."""
    device = next(g_net.parameters()).device
    x, labels = batch["image"][:rows].to(device), batch["attrs"][:rows].to(device)
    was_training = g_net.training
    g_net.eval()
    try:
        columns = [x] + [g_net(x, c) for c in single_flips(labels, cfg)]
    finally:
        g_net.train(was_training)
    cells = torch.stack(columns, dim=1).flatten(0, 1)  # row-major: input r, then its c_dim translations
    return make_grid(cells.float().cpu().clamp(-1, 1), nrow=len(columns))


def _decay_lr(opts: Optimizers, cfg: Config, it: int) -> None:
    # Official: at every multiple of lr_update_step past num_iters - num_iters_decay, lr -= lr0 * step.
    # Computed from the counter and each group's initial_lr, so a resumed run continues the same schedule.
    start = cfg.num_iters - cfg.num_iters_decay
    updates = max(0, it // cfg.lr_update_step - start // cfg.lr_update_step)
    step = (cfg.lr_update_step if cfg.lr_decay_to_zero else 1) / cfg.num_iters_decay
    factor = max(0.0, 1.0 - updates * step)
    for opt in opts.values():
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor


def train_step(nets: Nets, opts: Optimizers, batch: Batch, cfg: Config) -> dict[str, Tensor]:
    """One StarGAN iteration: a D update, and every n_critic-th iteration a G update (official solver.train).

    Paper -> code: G = nets["G"], D = nets["D"] returning (D_src, D_cls); x = batch["image"] (B, C, H, W) in
    [-1, 1]; c' (original domain labels, `c_org`) = batch["attrs"] (B, c_dim) float; c (target labels,
    `c_trg`) = batch["target_attrs"] if given, else `sample_targets` (a random permutation of c', groups kept
    valid); x̂'s ε = batch["gp_eps"] (B,) if given, else U[0, 1]. Supplying the draws lets a batch split over
    processes reproduce one process on the whole batch exactly (the DDP test does); the loop leaves them out.
    Hyperparameters (paper defaults): λ_cls = 1, λ_rec = 10, λ_gp = 10, n_critic = 5, Adam 1e-4 β (0.5, 0.999),
    batch 16 (the loop's), lr linear to 0 over the last num_iters_decay of num_iters iterations.

    The iteration counter (`iterations_done`) is read from and written to D's optimizer, so it is saved with
    the optimizer state. On iterations without a G step the G keys are absent from the result.
    Losses are means over the batch, so under DDP the all-reduced average of equal per-rank batches is the
    full-batch gradient. The penalty's D pass runs on D's inner module: its gradient reaches the same
    parameters inside the same single backward as the DDP-wrapped passes, so DDP all-reduces the sum once,
    and no DDP forward bookkeeping sees the double-backward graph.
    Returns detached scalars; no .item() here (a GPU sync point).
    """
    g_net, d_net = nets["G"], nets["D"]
    opt_g, opt_d = opts["G"], opts["D"]
    x_real, c_org = batch["image"], batch["attrs"]
    c_trg = batch["target_attrs"] if "target_attrs" in batch else sample_targets(c_org, cfg)
    it = iterations_done(opts)
    g_turn = (it + 1) % cfg.n_critic == 0

    # (0) x_fake = G(x, c). The G step below uses the same tensor (G has not changed in between; the
    #     official code recomputes it), so its graph is kept only on G iterations. With an identity term,
    #     G(x, c') rides in the same call: every norm in G is per image, so the doubled batch computes exactly
    #     the two calls' outputs with one call's overhead (at the demo's 16 px: G's part 25% faster, the whole
    #     step within this CPU's noise; BENCHMARKS.md, "StarGAN demo step").
    with_id = g_turn and cfg.lambda_id > 0
    with torch.set_grad_enabled(g_turn and torch.is_grad_enabled()):
        if with_id:
            x_fake, x_id = g_net(torch.cat([x_real, x_real]), torch.cat([c_trg, c_org])).chunk(2)
        else:
            x_fake = g_net(x_real, c_trg)

    # (1) D step: L_D = -L_adv + λ_cls L_cls^r + λ_gp GP (paper eq. 5 with the WGAN-GP L_adv of eq. 8), where
    #     -L_adv = -E[D_src(x)] + E[D_src(G(x, c))] and L_cls^r = E[-log D_cls(c'|x)].
    opt_d.zero_grad(set_to_none=True)
    out_src, out_cls = d_net(x_real)
    d_loss_real = losses._wgan_real(out_src)
    d_loss_cls = classification_loss(out_cls, c_org, cfg.label_mode)
    fake_src, _ = d_net(x_fake.detach())
    d_loss_fake = losses._wgan_fake(fake_src)
    # GP = E[(||∇_x̂ D_src(x̂)||_2 - 1)^2], x̂ = εx + (1 - ε)G(x, c) (eq. 8's penalty term).
    d_inner = getattr(d_net, "module", d_net)
    d_loss_gp = losses.gradient_penalty(lambda v: d_inner(v)[0], x_real, x_fake, eps=batch.get("gp_eps"))
    d_loss = d_loss_real + d_loss_fake + cfg.lambda_cls * d_loss_cls + cfg.lambda_gp * d_loss_gp
    d_loss.backward()
    opt_d.step()
    it += 1
    set_iterations_done(opts, it)

    out = {
        "loss/D": d_loss.detach(),
        "loss/D_real": d_loss_real.detach(),
        "loss/D_fake": d_loss_fake.detach(),
        "loss/D_cls": d_loss_cls.detach(),
        "loss/D_gp": d_loss_gp.detach(),
        # sigmoid(critic) is only a monotone score for WGAN: mean over patches and samples.
        "d/real_score": torch.sigmoid(out_src.detach().float()).mean(),
        "d/fake_score": torch.sigmoid(fake_src.detach().float()).mean(),
    }

    # (2) G step every n_critic iterations: L_G = L_adv + λ_cls L_cls^f + λ_rec L_rec, with
    #     L_adv = -E[D_src(G(x, c))], L_cls^f = E[-log D_cls(c|G(x, c))], L_rec = E[||x - G(G(x, c), c')||_1];
    #     beyond the paper, + λ_id E[||x - G(x, c')||_1] when lambda_id > 0 and + λ_stroke E[|m(x) - m(G(x, c))|]
    #     (stroke masks, gan_models/stroke.py) when lambda_stroke > 0.
    if g_turn:
        opt_g.zero_grad(set_to_none=True)
        with frozen(d_net) as d_fixed:  # the updated D, without its weight gradients or DDP
            g_src, g_cls = d_fixed(x_fake)
        g_loss_fake = losses.g_loss_wgan(g_src)
        g_loss_cls = classification_loss(g_cls, c_trg, cfg.label_mode)
        x_rec = g_net(x_fake, c_org)
        g_loss_rec = (x_real - x_rec).abs().mean()
        g_loss = g_loss_fake + cfg.lambda_cls * g_loss_cls + cfg.lambda_rec * g_loss_rec
        if with_id:
            g_loss_id = (x_real - x_id).abs().mean()
            g_loss = g_loss + cfg.lambda_id * g_loss_id
            out["loss/G_id"] = g_loss_id.detach()
        if cfg.lambda_stroke > 0:
            exempt = list(stroke_exempt(cfg))
            keeps = (c_trg[:, exempt] == c_org[:, exempt]).all(1) if exempt else None
            g_loss_stroke = stroke.keep_stroke(x_real, x_fake, keeps=keeps, reach=cfg.stroke_exempt_reach)
            g_loss = g_loss + cfg.lambda_stroke * g_loss_stroke
            out["loss/G_stroke"] = g_loss_stroke.detach()
        g_loss.backward()
        opt_g.step()
        out.update({"loss/G": g_loss.detach(), "loss/G_fake": g_loss_fake.detach(),
                    "loss/G_cls": g_loss_cls.detach(), "loss/G_rec": g_loss_rec.detach()})

    # (3) Learning rates: constant, then linear decay over the last num_iters_decay iterations.
    if cfg.num_iters_decay:
        _decay_lr(opts, cfg, it)
    return out


FAMILY = Family(
    name="stargan",
    dataset_kind="attributes",
    config=Config,
    build=build,
    build_optimizers=build_optimizers,
    train_step=train_step,
    sample_latent=None,
    example_batch=example_batch,
    generator_inputs=generator_inputs,
    sample_grid=sample_grid,
    generator="G",
)
