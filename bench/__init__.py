"""bench: MT-Bench acceptance of speculative decoding, per category, as model cards publish it.

The pipeline runs in one direction (README.md, "Layout"): config -> dataset -> conversation ->
engine -> records -> metrics -> report. Everything after `records` needs no engine.
"""

__version__ = "0.1.0"

# Bumped whenever a definition in docs/metrics.md changes meaning.
METHODOLOGY_VERSION = "1"
