"""Published acceptance tables (configs/references/*.yaml), e.g. a model card's.

A table holds the card's per-category "MT Bench Acceptance Rate" (our card AL) and the
setup it was measured under; its overall figure is the mean of its categories, the same
macro average we report.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from bench.config import describe_validation_error, read_yaml
from bench.dataset import CATEGORIES, SPEED_BENCH_CATEGORIES
from bench.errors import BenchError


class ReferenceTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """Who published it (e.g. the model card's repository)."""
    source: str
    """Where the numbers were read."""
    draft_len: int
    setup: str = ""
    """Engine, hardware, reasoning setting, as published."""
    dataset: str = "mt-bench"
    """The dataset the table measured (`DatasetConfig.name`)."""
    categories: dict[str, float]

    @model_validator(mode="after")
    def _known(self) -> ReferenceTable:
        known = SPEED_BENCH_CATEGORIES if self.dataset == "speed-bench" else CATEGORIES
        unknown = sorted(set(self.categories) - set(known))
        if unknown and self.dataset in ("mt-bench", "speed-bench"):
            raise ValueError(f"unknown categories {unknown}")
        return self

    @property
    def overall(self) -> float:
        """Mean of the published categories (the cards print no overall of their own)."""
        return sum(self.categories.values()) / len(self.categories)


def load_reference(path: str | Path) -> ReferenceTable:
    path = Path(path)
    data = read_yaml(path, "reference table")
    try:
        return ReferenceTable.model_validate(data)
    except ValidationError as err:
        raise BenchError(describe_validation_error(err, f"reference table {path}")) from None
