"""Hypothesis profiles of the fuzz tier (tests/fuzz, marked ``fuzz``).

- ``ci`` (the default): derandomized (the same examples on every run, so CI never flakes on a new
  example), few enough examples that the whole directory runs in well under a minute on 2 cores.
- ``long``: random, many more examples, for hunting: ``pytest tests/fuzz --hypothesis-profile=long``
  (the profile is registered here, so name the directory: a run from the root loads this file too late).

No example database is written (nothing appears in the work tree); a failure prints the minimal example
and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,  # wall-clock per example is not what these tests check (2 shared cores)
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=300, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=20_000, **_COMMON)
if settings.get_current_profile_name() == "default":  # --hypothesis-profile chose none
    settings.load_profile("ci")
