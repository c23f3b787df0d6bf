"""PyTorch reference of PULSE's StyleGAN v1, written from docs/stylegan.md, "StyleGAN v1".

Independent of pulse_jax (NCHW, torch ops, the reference's own formulation of
every layer), used only by tests and benchmarks. State dicts use the real key
names; ``random_*_state_dict`` makes EVERY parameter random (noise weights and
biases included: zero inits would hide bugs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def nf(stage: int, fmap_base: int, fmap_max: int, fmap_decay: float = 1.0) -> int:
    return min(int(fmap_base / (2.0 ** (stage * fmap_decay))), fmap_max)


def block_resolutions(resolution: int) -> list[int]:
    return [2**k for k in range(2, int(math.log2(resolution)) + 1)]


def blur_kernel() -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0])
    k = k[:, None] * k[None, :]
    return (k / k.sum())[None, None]


def random_synthesis_state_dict(resolution=1024, fmap_base=8192, fmap_max=512, dlatent=512,
                                seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    sd: dict[str, torch.Tensor] = {}  # in the real file's key order
    last = nf(int(math.log2(resolution)) - 1, fmap_base, fmap_max)
    sd["torgb.weight"] = rnd(3, last, 1, 1)
    sd["torgb.bias"] = rnd(3, std=0.1)
    for res in block_resolutions(resolution):
        k = int(math.log2(res))
        c = nf(k - 1, fmap_base, fmap_max)
        p = f"blocks.{res}x{res}."
        if res == 4:
            sd[p + "const"] = rnd(1, c, 4, 4)
            sd[p + "bias"] = rnd(c, std=0.1)
        else:
            c_in = nf(k - 2, fmap_base, fmap_max)
            sd[p + "conv0_up.weight"] = rnd(c, c_in, 3, 3)
            sd[p + "conv0_up.bias"] = rnd(c, std=0.1)
            sd[p + "conv0_up.intermediate.kernel"] = blur_kernel()
        conv = "conv" if res == 4 else "conv1"
        for part in ("epi1", conv, "epi2"):
            if part == conv:
                sd[p + conv + ".weight"] = rnd(c, c, 3, 3)
                sd[p + conv + ".bias"] = rnd(c, std=0.1)
            else:
                sd[p + part + ".noise.weight"] = rnd(c, std=0.1)
                sd[p + part + ".style_mod.lin.weight"] = rnd(2 * c, dlatent)
                sd[p + part + ".style_mod.lin.bias"] = rnd(2 * c, std=0.1)
    return sd


def random_mapping_state_dict(dlatent=512, seed=1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(8):
        # StyleGAN's mapping init is N(0, 1/lrmul); biases random here on purpose.
        sd[f"dense{i}.weight"] = torch.randn(dlatent, dlatent, generator=g) * 100.0
        sd[f"dense{i}.bias"] = torch.randn(dlatent, generator=g) * 10.0
    return sd


def random_gaussian_fit(dlatent=512, seed=2) -> dict[str, torch.Tensor]:
    """Random statistics in the format of PULSE's gaussian_fit.pt ({"mean", "std"}, float32) with the
    moments of the file PULSE ships for FFHQ (mean: -0.27 +- 0.15, std: 0.48 +- 0.07, over the 512
    entries), so that searches start from latents of a realistic scale. Made here: no file derived from
    real weights is committed."""
    g = torch.Generator().manual_seed(seed)
    return {"mean": torch.randn(dlatent, generator=g) * 0.15 - 0.27,
            "std": (torch.randn(dlatent, generator=g) * 0.07 + 0.48).clamp(min=0.3)}


def _epilogue(sd, p, x, w, noise):
    c = x.shape[1]
    x = x + sd[p + ".noise.weight"].view(1, -1, 1, 1) * noise
    x = F.leaky_relu(x, 0.2)
    x = x - x.mean((2, 3), keepdim=True)
    x = x * torch.rsqrt(x.pow(2).mean((2, 3), keepdim=True) + 1e-5)
    lin_w = sd[p + ".style_mod.lin.weight"]
    style = F.linear(w, lin_w * (1.0 / math.sqrt(lin_w.shape[1])), sd[p + ".style_mod.lin.bias"])
    style = style.view(-1, 2, c, 1, 1)
    return x * (style[:, 0] + 1.0) + style[:, 1]


def _conv(sd, name, x, gain=SQRT2, bias=True):
    wt = sd[name + ".weight"]
    w_mul = gain / math.sqrt(wt.shape[1] * wt.shape[2] * wt.shape[3])
    return F.conv2d(x, wt * w_mul, sd[name + ".bias"] if bias else None, padding=wt.shape[2] // 2)


def _conv0_up(sd, name, x):
    wt = sd[name + ".weight"]
    w_mul = SQRT2 / math.sqrt(wt.shape[1] * 9)
    if x.shape[2] * 2 >= 128:
        k = (wt * w_mul).permute(1, 0, 2, 3)
        k = F.pad(k, (1, 1, 1, 1))
        k = k[:, :, 1:, 1:] + k[:, :, :-1, 1:] + k[:, :, 1:, :-1] + k[:, :, :-1, :-1]
        x = F.conv_transpose2d(x, k, stride=2, padding=1)
    else:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.conv2d(x, wt * w_mul, padding=1)
    c = x.shape[1]
    x = F.conv2d(x, sd[name + ".intermediate.kernel"].expand(c, 1, 3, 3), padding=1, groups=c)
    return x + sd[name + ".bias"].view(1, -1, 1, 1)


def synthesis(sd, w: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
    """w (B, L, 512); noise[i] (B, 1, r_i, r_i) -> (B, 3, R, R)."""
    resolution = max(int(k.split(".")[1].split("x")[0]) for k in sd if k.startswith("blocks."))
    x = None
    for i, res in enumerate(block_resolutions(resolution)):
        p = f"blocks.{res}x{res}"
        if res == 4:
            x = sd[p + ".const"].expand(w.shape[0], -1, -1, -1) + sd[p + ".bias"].view(1, -1, 1, 1)
            x = _epilogue(sd, p + ".epi1", x, w[:, 2 * i], noise[2 * i])
            x = _conv(sd, p + ".conv", x)
        else:
            x = _conv0_up(sd, p + ".conv0_up", x)
            x = _epilogue(sd, p + ".epi1", x, w[:, 2 * i], noise[2 * i])
            x = _conv(sd, p + ".conv1", x)
        x = _epilogue(sd, p + ".epi2", x, w[:, 2 * i + 1], noise[2 * i + 1])
    return _conv(sd, "torgb", x, gain=1.0)


def mapping(sd, z: torch.Tensor) -> torch.Tensor:
    x = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
    for i in range(8):
        wt = sd[f"dense{i}.weight"]
        x = F.linear(x, wt * (SQRT2 / math.sqrt(wt.shape[1]) * 0.01), sd[f"dense{i}.bias"] * 0.01)
        x = F.leaky_relu(x, 0.2)
    return x
