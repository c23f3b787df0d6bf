"""What a flag's text becomes: argparse value types (each turns a bad value into argparse's one-line error)."""

from __future__ import annotations

import argparse


def path_arg(text: str) -> str:
    """argparse type of a file or folder name: not empty (an empty one would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name; give a folder (e.g. runs/)")
    return text


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse turns the error into one line and exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


SEED_LIMIT = 2**63  # jax.random.key takes a signed 64-bit seed


def seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**63 - 1, got {value}")
    return value


TRI_STATE = {"auto": None, "on": True, "off": False}


def tri_state(text: str) -> bool | None:
    """argparse type of a ``bool | None`` field: auto (None), on, off."""
    if text not in TRI_STATE:
        raise argparse.ArgumentTypeError(f"choose auto, on or off, got {text!r}")
    return TRI_STATE[text]


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def shard_arg(text: str) -> tuple[int, int]:
    """``I/N``: the I-th (from 0) of N shares of the inputs."""
    i, sep, n = text.partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        i = n = -1
    if not sep or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"write I/N with 0 <= I < N (e.g. 0/4 for the first of 4 shards), got "
                                         f"{text!r}")
    return i, n
