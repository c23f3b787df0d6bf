"""``python -m convert``: PULSE's PyTorch checkpoints -> a pulse-jax model directory."""

from __future__ import annotations

import argparse
import sys

from pulse_jax.errors import PulseJaxError


def build_parser(prog: str = "python -m convert") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Convert PULSE's StyleGAN v1 checkpoints (synthesis.pt, mapping.pt, gaussian_fit.pt) "
        "into a pulse-jax model directory. Files are read with torch.load(weights_only=True): "
        "a checkpoint that carries code is refused.",
    )
    p.add_argument("--synthesis", required=True, help="PULSE's synthesis.pt (state dict of the synthesis network)")
    p.add_argument("--mapping", help="PULSE's mapping.pt (needed for model.map and to compute the gaussian fit)")
    p.add_argument("--gaussian-fit", help="PULSE's gaussian_fit.pt ({'mean', 'std'}); "
                   "computed from --mapping when not given")
    p.add_argument("--gaussian-fit-samples", type=int, default=1_000_000,
                   help="samples for computing the gaussian fit (default: 1,000,000, as the reference)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m convert") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
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
