"""What every per-category table needs: the "overall or this category" lookup and one way
to print a number. Shared by report, compare, dashboard and analysis; no engine, no torch.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

OVERALL = "overall"
"""The row name of every counted question together, after the categories."""

T = TypeVar("T", covariant=True)


class ByCategory(Protocol[T]):
    """A summary (`GroupSummary` per category) or a reference table (a number each)."""

    @property
    def overall(self) -> T | None: ...

    @property
    def categories(self) -> Any: ...


def lookup(table: ByCategory[T], name: str) -> T | None:
    """`table`'s entry for category `name`, or its overall entry for "overall"; None when
    it has none."""
    return table.overall if name == OVERALL else table.categories.get(name)


def fmt(value: float | None, spec: str = ".3f") -> str:
    """A number as the tables print it ("–" when there is none); `spec` as `format` takes."""
    return "–" if value is None else format(value, spec)


def fmt_ci(ci: tuple[float, float] | None) -> str:
    """A 95 % interval as "[low, high]" ("–" when there is none)."""
    return "–" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
