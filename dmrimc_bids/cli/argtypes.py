"""argparse pieces the command lines share: value types with one-line errors, and a parser whose usage
errors exit with EX_USAGE (64, the BIDS-Apps convention)."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import EX_USAGE


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors print the usage (unless show_usage is False) and one line, and exit 64."""
    show_usage = True

    def error(self, message):
        if self.show_usage:
            self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EX_USAGE)


def positive(kind):
    """A type for values > 0 of ``kind`` (int or float)."""
    def conv(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return v
    return conv


def nonnegative(text) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return v


def pair(text: str, what: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{what} must look like NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    return name.strip(), value.strip()


def fix(text):
    name, value = pair(text, "--fix")
    try:
        return name, float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--fix {text}: {value!r} is not a number") from exc


def bound(text):
    name, value = pair(text, "--bounds")
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--bounds {text}: give NAME=LO,HI") from exc
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"--bounds {text}: LO must be below HI")
    return name, (lo, hi)


def point_prior(text):
    """NAME=design|entries (--point-prior)."""
    name, value = pair(text, "--point-prior")
    if value not in ("design", "entries"):
        raise argparse.ArgumentTypeError(f"--point-prior {text}: the prior is design or entries, not {value!r}")
    return name, value


def memory_gb(text: str) -> float:
    """'8G', '8000M', '8g', '8' (GB) -> GB."""
    units = {"K": 1e-6, "M": 1e-3, "G": 1.0, "T": 1e3}
    t = text.strip().upper().removesuffix("B")
    scale = units.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mem {text}: give e.g. 8G or 8000M") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--mem {text}: must be positive")
    return value
