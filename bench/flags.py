"""Argument types for the benchmarks' comma-separated flags: a wrong item stops the parse, with the flag named,
before anything is measured (a typo would otherwise surface minutes into a run, or never: an unknown stage measured
nothing)."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

from models.backbones import BACKBONES


def _split(value: str) -> list[str]:
    items = value.split(",")
    if not all(items):
        raise argparse.ArgumentTypeError(f"{value!r} has an empty item: comma-separated, no spaces")
    return items


def names(allowed: Iterable[str]) -> Callable[[str], list[str]]:
    """``a,b,...``, each one of ``allowed``."""
    allowed = list(allowed)

    def parse(value: str) -> list[str]:
        items = _split(value)
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"{', '.join(unknown)} not among {allowed}")
        return items

    return parse


def counts(minimum: int = 0) -> Callable[[str], list[int]]:
    """``1,4,16``: whole numbers of at least ``minimum``."""
    def parse(value: str) -> list[int]:
        try:
            numbers = [int(item) for item in _split(value)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r}: comma-separated whole numbers") from None
        if min(numbers) < minimum:
            raise argparse.ArgumentTypeError(f"{value!r}: each at least {minimum}")
        return numbers

    return parse


def pair(value: str) -> tuple[str, str]:
    """``student:teacher``, two networks ``build_backbone`` makes."""
    student, _, teacher = value.partition(":")
    unknown = [name for name in (student, teacher) if name not in BACKBONES]
    if unknown or not teacher:
        raise argparse.ArgumentTypeError(f"{value!r}: give student:teacher, each one of {sorted(BACKBONES)}")
    return student, teacher


def pairs(value: str) -> list[tuple[str, str]]:
    """``student:teacher,...``."""
    return [pair(item) for item in _split(value)]
