"""Start-up of tokenization's worker processes (etl's pool).

Standard library only at import: `init` runs in a freshly spawned worker before polars and
pyarrow load, so that the environment it sets (POLARS_MAX_THREADS) is the one they read.
"""

from __future__ import annotations

import os


def init(env: dict[str, str]) -> None:
    """Set `env` in this worker, then load the ETL and switch arrow to its lean memory pool."""
    os.environ.update(env)
    from tokenization.etl import _lean_arrow_memory

    _lean_arrow_memory()
