"""A PyTorch StyleGAN2 ("skip", config-f / ADA) written from docs/stylegan.md, "StyleGAN2",
over a flat state dict with NVIDIA's key names; every parameter and buffer random. The test reference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def channels(res: int, channel_base: int, channel_max: int) -> int:
    return min(channel_base // res, channel_max)


def block_resolutions(resolution: int) -> list[int]:
    return [2**k for k in range(2, int(math.log2(resolution)) + 1)]


def resample_filter() -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(k, k)
    return f / f.sum()


def random_generator_state_dict(resolution=64, channel_base=1024, channel_max=32, w_dim=512, mapping_layers=8,
                                seed=0) -> dict[str, torch.Tensor]:
    """Every parameter and buffer random: affine biases about 1, noise strengths, biases, noise_const maps,
    w_avg all non-zero; the stored conv weights N(0, 1) as NVIDIA initialises them."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0, mean=0.0):
        return mean + std * torch.randn(*shape, generator=g)

    sd = {}
    for i in range(mapping_layers):
        sd[f"mapping.fc{i}.weight"] = randn(w_dim, w_dim, std=100.0)  # / lr_multiplier, as initialised
        sd[f"mapping.fc{i}.bias"] = randn(w_dim, std=10.0)
    sd["mapping.w_avg"] = randn(w_dim)
    for res in block_resolutions(resolution):
        c = channels(res, channel_base, channel_max)
        p = f"synthesis.b{res}"
        layers = [("conv1", c)] if res == 4 else [("conv0", channels(res // 2, channel_base, channel_max)),
                                                  ("conv1", c)]
        if res == 4:
            sd[f"{p}.const"] = randn(c, 4, 4)
        for name, c_in in layers:
            sd[f"{p}.{name}.affine.weight"] = randn(c_in, w_dim)
            sd[f"{p}.{name}.affine.bias"] = randn(c_in, std=0.2, mean=1.0)
            sd[f"{p}.{name}.weight"] = randn(c, c_in, 3, 3)
            sd[f"{p}.{name}.noise_strength"] = randn((), std=0.3)
            sd[f"{p}.{name}.bias"] = randn(c, std=0.2)
            sd[f"{p}.{name}.noise_const"] = randn(res, res)
            sd[f"{p}.{name}.resample_filter"] = resample_filter()
        sd[f"{p}.torgb.affine.weight"] = randn(c, w_dim)
        sd[f"{p}.torgb.affine.bias"] = randn(c, std=0.2, mean=1.0)
        sd[f"{p}.torgb.weight"] = randn(3, c, 1, 1)
        sd[f"{p}.torgb.bias"] = randn(3, std=0.2)
        sd[f"{p}.resample_filter"] = resample_filter()
    return sd


def dense(x, weight, bias, lr_mul=1.0):
    return x @ (weight * (lr_mul / math.sqrt(weight.shape[1]))).t() + bias * lr_mul


def lrelu(x, clamp=None):
    y = F.leaky_relu(x, 0.2) * SQRT2
    return y if clamp is None else y.clamp(-clamp, clamp)


def mapping(sd, z, lr_mul=0.01):
    x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
    i = 0
    while f"mapping.fc{i}.weight" in sd:
        x = lrelu(dense(x, sd[f"mapping.fc{i}.weight"], sd[f"mapping.fc{i}.bias"], lr_mul))
        i += 1
    return x


def _filter(x, pad):
    c = x.shape[1]
    f = (4 * resample_filter()).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, pad), f, groups=c)


def upsample2d(x):
    """Zeros between samples (y -> 2y), pad 2 before and 1 after, the 4x4 filter times 4."""
    b, c, h, w = x.shape
    up = torch.zeros(b, c, 2 * h, 2 * w, dtype=x.dtype)
    up[:, :, ::2, ::2] = x
    return _filter(up, (2, 1, 2, 1))


def modulated_layer(sd, p, x, w, noise, clamp, up):
    weight = sd[f"{p}.weight"]
    s = dense(w, sd[f"{p}.affine.weight"], sd[f"{p}.affine.bias"])                       # (B, I)
    wm = weight[None] * s[:, None, :, None, None]                                         # (B, O, I, 3, 3)
    d = (wm.square().sum(dim=(2, 3, 4)) + 1e-8).rsqrt()                                   # (B, O)
    # The fused (grouped, per-sample weight) form, the other of the two equal forms the spec gives.
    b, c_in, h, wd = x.shape
    kernel = (wm * d[:, :, None, None, None]).reshape(-1, c_in, 3, 3)
    xs = x.reshape(1, b * c_in, h, wd)
    if up:
        kt = (wm * d[:, :, None, None, None]).transpose(1, 2).reshape(b * c_in, -1, 3, 3)
        y = F.conv_transpose2d(xs, kt, stride=2, groups=b)
        y = y.reshape(b, -1, *y.shape[2:])
        y = _filter(y, (1, 1, 1, 1))
    else:
        y = F.conv2d(xs, kernel, padding=1, groups=b).reshape(b, -1, h, wd)
    y = y + noise.reshape(noise.shape[0], 1, *noise.shape[-2:]) * sd[f"{p}.noise_strength"]
    return lrelu(y + sd[f"{p}.bias"][None, :, None, None], clamp)


def torgb(sd, p, x, w, clamp):
    s = dense(w, sd[f"{p}.affine.weight"], sd[f"{p}.affine.bias"]) / math.sqrt(x.shape[1])
    y = F.conv2d(x * s[:, :, None, None], sd[f"{p}.weight"]) + sd[f"{p}.bias"][None, :, None, None]
    return y if clamp is None else y.clamp(-clamp, clamp)


def synthesis(sd, ws, noise, conv_clamp=None):
    """ws (B, num_ws, w_dim), noise [(B, r, r)] (one per synthesis layer) -> (B, 3, R, R)."""
    resolution = max(int(k.split(".")[1][1:]) for k in sd if k.startswith("synthesis.b"))
    x = img = None
    for k, res in enumerate(block_resolutions(resolution)):
        p = f"synthesis.b{res}"
        if k == 0:
            x = sd[f"{p}.const"][None].repeat(ws.shape[0], 1, 1, 1)
            x = modulated_layer(sd, f"{p}.conv1", x, ws[:, 0], noise[0], conv_clamp, up=False)
            img = torgb(sd, f"{p}.torgb", x, ws[:, 1], conv_clamp)
            continue
        x = modulated_layer(sd, f"{p}.conv0", x, ws[:, 2 * k - 1], noise[2 * k - 1], conv_clamp, up=True)
        x = modulated_layer(sd, f"{p}.conv1", x, ws[:, 2 * k], noise[2 * k], conv_clamp, up=False)
        img = upsample2d(img) + torgb(sd, f"{p}.torgb", x, ws[:, 2 * k + 1], conv_clamp)
    return img


def const_noise(sd) -> list[torch.Tensor]:
    """The stored noise maps in layer order (NVIDIA's noise_mode="const")."""
    names = [k for k in sd if k.endswith(".noise_const")]
    order = sorted(names, key=lambda k: (int(k.split(".")[1][1:]), k.split(".")[2]))
    return [sd[k] for k in order]


def noise_regularization(maps: list[torch.Tensor]) -> torch.Tensor:
    """NVIDIA's StyleGAN2 projector's noise regularisation, from its formula: for each map (H, W), and its
    2x2 average pools while larger than 8x8, the squared mean products with the map rolled by one pixel
    along each axis, summed."""
    reg = torch.zeros((), dtype=maps[0].dtype)
    for v in maps:
        x = v.reshape(1, 1, *v.shape[-2:])
        while True:
            reg = reg + (x * torch.roll(x, shifts=1, dims=3)).mean() ** 2
            reg = reg + (x * torch.roll(x, shifts=1, dims=2)).mean() ** 2
            if x.shape[2] <= 8:
                break
            x = torch.nn.functional.avg_pool2d(x, kernel_size=2)
    return reg
