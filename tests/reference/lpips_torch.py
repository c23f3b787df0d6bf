"""The reference LPIPS: the lpips package's own code (installed for the tests only, without its
dependencies), with a stand-in for torchvision that builds VGG16's ``features`` layer for layer as
torchvision does (3x3 convolutions with padding 1, in-place ReLUs, 2x2 max pools), with random weights.

The package reads its real v0.1 heads from its own ``weights/v0.1/vgg.pth``; only the trunk is random.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import torch
from torch import nn

# VGG16's configuration "D" (Simonyan & Zisserman 2015): channels per convolution, "M" a max pool.
VGG16_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

INSTALL_HINT = "pip install --no-deps lpips==0.1.4 (the README's test command does)"


class _VGG16(nn.Module):
    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in VGG16_D:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)


def _vgg16(pretrained: bool = False, **_):
    assert not pretrained, "the reference trunk is random: nothing is downloaded"
    return _VGG16()


def import_lpips():
    """The lpips package, imported with the torchvision stand-in in place (restored afterwards)."""
    standin = types.ModuleType("torchvision")
    standin.models = types.SimpleNamespace(vgg16=_vgg16)
    saved = {name: sys.modules.get(name) for name in ("torchvision", "torchvision.models")}
    sys.modules["torchvision"], sys.modules["torchvision.models"] = standin, standin.models
    try:
        import lpips
    except ModuleNotFoundError as e:
        raise AssertionError(f"the LPIPS parity tests need the lpips package ({e}): {INSTALL_HINT}") from None
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return lpips


def reference_lpips(seed: int = 0):
    """-> (lpips.LPIPS with real heads and a random trunk, float64; torchvision-style state dict of that
    trunk; path of the package's heads file). Every trunk parameter is drawn He-normal (biases too,
    small), so that activations keep their scale through the 13 layers."""
    lpips = import_lpips()
    torch.manual_seed(seed)
    model = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    trunk = {}
    with torch.no_grad():
        for name, p in model.net.named_parameters():  # "slice<s>.<features index>.weight|bias"
            if p.ndim == 4:
                p.normal_(0.0, math.sqrt(2.0 / (p.shape[1] * 9)))
            else:
                p.normal_(0.0, 0.05)
            _, index, part = name.split(".")
            trunk[f"features.{index}.{part}"] = p.detach().clone()
    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    return model.double().eval(), trunk, heads


def nchw(x) -> torch.Tensor:
    return torch.as_tensor(x).permute(0, 3, 1, 2).contiguous()
