"""PyTorch reference of PULSE's search loop, written from docs/pulse.md.

torch's own optimisers and LambdaLR, the spherical projection, the losses and
the bicubic operator, over a batch of independent samples. Used by tests and
the benchmark harness; started from given values so both sides can be compared.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from reference import stylegan_torch


def cubic(t: float, a: float = -0.5) -> float:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def bicubic_down(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/f, W/f): reflect pad 3f, separable stride-f filter of 4f taps."""
    if factor == 1:
        return x
    n = 4 * factor
    k = torch.tensor([cubic((i - math.floor(n / 2) + 0.5) / factor) for i in range(n)], dtype=x.dtype,
                     device=x.device)
    k = k / k.sum()
    c = x.shape[1]
    pad = 3 * factor
    before, after = pad // 2, pad - pad // 2
    x = F.pad(x, (0, 0, before, after), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, n, 1).expand(c, 1, n, 1), stride=(factor, 1), groups=c)
    x = F.pad(x, (before, after, 0, 0), mode="reflect")
    return F.conv2d(x, k.view(1, 1, 1, n).expand(c, 1, 1, n), stride=(1, factor), groups=c)


def parse_loss(loss_str: str):
    terms = []
    for part in loss_str.split("+"):
        weight, name = part.split("*") if "*" in part else ("1", part)
        terms.append((float(weight), name.strip()))
    return terms


def geocross(w: torch.Tensor) -> torch.Tensor:
    """Per sample; w (B, L, D)."""
    if w.shape[1] == 1:
        return torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    x, y = w[:, None], w[:, :, None]
    a = ((x - y).pow(2).sum(-1) + 1e-9).sqrt()
    b = ((x + y).pow(2).sum(-1) + 1e-9).sqrt()
    d = 2 * torch.atan2(a, b)
    return (d.pow(2) * w.shape[-1]).mean((1, 2)) / 8.0


def schedule(name: str, steps: int):
    def one_cycle(x, length):
        return (9 * (1 - abs(x / length - 1 / 2) * 2) + 1) / 10

    if name == "fixed":
        return lambda x: 1.0
    if name == "linear1cycle":
        return lambda x: one_cycle(x, steps)
    drop = 0.9 * steps
    return lambda x: one_cycle(x, drop) if x < drop else 1 / 10 + (x - drop) / (0.1 * steps) * (1 / 1000 - 1 / 10)


def make_optimizer(name: str, params, lr: float):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.Adamax(params, lr=lr)


class SphericalOptimizer:
    """Optimiser step, then every optimised tensor back onto its initial sphere."""

    def __init__(self, name, params, lr):
        self.params = params
        self.opt = make_optimizer(name, params, lr)
        with torch.no_grad():
            self.radii = {p: (p.pow(2).sum(tuple(range(2, p.ndim)), keepdim=True) + 1e-9).sqrt() for p in params}

    @torch.no_grad()
    def step(self):
        self.opt.step()
        for p in self.params:
            p.data.div_((p.pow(2).sum(tuple(range(2, p.ndim)), keepdim=True) + 1e-9).sqrt())
            p.mul_(self.radii[p])


def run(sd, gaussian_fit, ref_lr: torch.Tensor, latent: torch.Tensor, noise: list[torch.Tensor], *,
        loss_str="100*L2+0.05*GEOCROSS", eps=2e-3, trainable_layers=(0, 1, 2, 3, 4), opt_name="adam",
        learning_rate=0.4, steps=100, lr_schedule="linear1cycledrop", synthesis=None, num_ws=None,
        resolution=None):
    """One PULSE run over a batch. ref_lr (B, 3, h, h); latent (B, Lt, D); noise: L maps (B, 1, r, r).

    ``synthesis(sd, w, noise)``: the generator (StyleGAN v1's by default); ``num_ws``: its W+ rows (default:
    one per noise map, as in StyleGAN v1); ``resolution``: its output side (default: the last noise map's).

    Returns per-sample histories (steps, B) of the total loss and unclamped MSE, and the final values.
    """
    synthesis = synthesis or stylegan_torch.synthesis
    mean, std = gaussian_fit
    latent = latent.clone().requires_grad_(True)
    noise = [n.clone().requires_grad_(i in trainable_layers) for i, n in enumerate(noise)]
    variables = [latent] + [noise[i] for i in trainable_layers]
    opt = SphericalOptimizer(opt_name, variables, learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt.opt, schedule(lr_schedule, steps))
    num_layers = len(noise)
    resolution = resolution or noise[-1].shape[-1]
    factor = resolution // ref_lr.shape[-1]
    terms = parse_loss(loss_str)
    loss_hist, l2_hist = [], []
    for _ in range(steps):
        opt.opt.zero_grad()
        w = F.leaky_relu(latent * std + mean, 0.2)
        w_all = w.expand(-1, num_ws or num_layers, -1)
        gen = (synthesis(sd, w_all, noise) + 1) / 2
        lr_gen = bicubic_down(gen, factor)
        sq = (lr_gen - ref_lr).pow(2).mean((1, 2, 3))
        per_sample = torch.zeros(latent.shape[0], dtype=latent.dtype, device=latent.device)
        for weight, name in terms:
            if name == "L2":
                per_sample = per_sample + weight * sq.clamp(min=eps)
            elif name == "L1":
                per_sample = per_sample + weight * 10 * (lr_gen - ref_lr).abs().mean((1, 2, 3)).clamp(min=eps)
            else:
                per_sample = per_sample + weight * geocross(w)
        loss_hist.append(per_sample.detach().clone())
        l2_hist.append(sq.detach().clone())
        per_sample.sum().backward()
        opt.step()
        sched.step()
    return torch.stack(loss_hist), torch.stack(l2_hist), latent.detach(), [n.detach() for n in noise]
