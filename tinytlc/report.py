"""Plain-text tables for the demo and the benchmarks."""

from __future__ import annotations


def mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in cells[1:]])
