"""``python -m convert``: PULSE's checkpoints, or a network file (StyleGAN, StyleGAN2) -> a model directory;
torchvision's VGG16 and LPIPS's heads -> a perceptual-model directory."""

from __future__ import annotations

import argparse
import sys

from pulse_jax.errors import PulseJaxError
from pulse_jax.flag_types import path_arg


def build_parser(prog: str = "python -m convert") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Convert PULSE's StyleGAN v1 checkpoints (--synthesis, --mapping, --gaussian-fit) or a "
        "network file (--network: an NVIDIA stylegan2-ada-pytorch network pickle, NVIDIA's TensorFlow-era "
        "StyleGAN or StyleGAN2 pickle, or a rosinality checkpoint) into a pulse-jax model directory. No code "
        "from any file runs: torch files are read with torch.load(weights_only=True), network pickles with an "
        "unpickler that resolves only the globals a network pickle needs and never runs the source code they "
        "carry.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--network", help="a generator file, the kind read from the content: NVIDIA's "
                        "stylegan2-ada-pytorch pickle (G_ema is used, else G), NVIDIA's TensorFlow-era pickle "
                        "((G, D, Gs): Gs; StyleGAN's karras2019stylegan-*.pkl -> StyleGAN v1, StyleGAN2's "
                        "stylegan2-*-config-f.pkl -> StyleGAN2) or rosinality's .pt (g_ema, latent_avg)")
    source.add_argument("--synthesis", help="PULSE's synthesis.pt (state dict of the synthesis network)")
    source.add_argument("--vgg16", help="a perceptual model instead of a generator: torchvision's VGG16 weights "
                        "(vgg16-397923af.pth, in torch's hub cache), with --lpips-heads; --out then holds LPIPS "
                        "v0.1 for --loss-str ...+LPIPS and --perceptual")
    p.add_argument("--lpips-heads", help="with --vgg16: the lpips package's linear heads "
                   "(lpips/weights/v0.1/vgg.pth)")
    p.add_argument("--mapping", help="PULSE's mapping.pt (needed for model.map and to compute the gaussian fit)")
    p.add_argument("--gaussian-fit", help="PULSE's gaussian_fit.pt ({'mean', 'std'}); "
                   "computed from --mapping when not given")
    p.add_argument("--gaussian-fit-samples", "--fit-samples", dest="gaussian_fit_samples", type=int,
                   default=1_000_000,
                   help="samples for computing the gaussian fit (default: 1,000,000, as the reference)")
    p.add_argument("--out", required=True, type=path_arg, help="model directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m convert") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        if (args.lpips_heads is None) != (args.vgg16 is None):
            raise PulseJaxError("--vgg16 and --lpips-heads go together: the trunk's weights and the heads make "
                                "one perceptual model")
        if args.vgg16 is not None:
            from convert.perceptual import convert_lpips

            if args.mapping is not None or args.gaussian_fit is not None:
                raise PulseJaxError("--mapping and --gaussian-fit belong to a generator, not to --vgg16")
            out = convert_lpips(vgg16=args.vgg16, lpips_heads=args.lpips_heads, out=args.out,
                                overwrite=args.overwrite, verbose=not args.quiet)
        elif args.network is not None:
            from convert.network import convert_network

            if args.mapping is not None:
                raise PulseJaxError("--mapping goes with --synthesis (PULSE's files); a --network file holds "
                                    "its mapping network")
            out = convert_network(network=args.network, out=args.out, gaussian_fit=args.gaussian_fit,
                                  overwrite=args.overwrite, gaussian_fit_samples=args.gaussian_fit_samples,
                                  verbose=not args.quiet)
        else:
            from convert.pulse import convert

            out = convert(
                synthesis=args.synthesis, mapping=args.mapping, gaussian_fit=args.gaussian_fit,
                out=args.out, overwrite=args.overwrite, gaussian_fit_samples=args.gaussian_fit_samples,
                verbose=not args.quiet,
            )
    except PulseJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if e.name == "torch":
            print("error: conversion needs PyTorch: pip install 'pulse-jax[convert]' (or torch)", file=sys.stderr)
            return 2
        raise
    if not args.quiet:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
