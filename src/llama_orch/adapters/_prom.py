"""Reading one gauge out of an engine's Prometheus text scrape (no full parser needed)."""

from __future__ import annotations

import math


def gauge_value(text: str, *names: str) -> float | None:
    """The mean of the samples of the first of ``names`` present in ``text``; None if absent.

    Engines that run several internal engines (vLLM data parallel) label one sample each; their
    mean is the replica's figure. Comments, other metrics and unparsable values are skipped.
    """
    for name in names:
        values: list[float] = []
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            rest = line[len(name) :]
            if rest[:1] == "{":
                end = rest.find("}")
                if end < 0:
                    continue
                rest = rest[end + 1 :]
            elif rest[:1] not in (" ", "\t"):
                continue  # a longer name sharing the prefix
            fields = rest.split()
            if not fields:
                continue
            try:
                value = float(fields[0])
            except ValueError:
                continue
            if math.isfinite(value):
                values.append(value)
        if values:
            return sum(values) / len(values)
    return None
