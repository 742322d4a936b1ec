"""Write a test's edited checkpoint state.json as a trainer would have written it.

state.json carries the sha256 of its own other keys (ehrfm.checkpoint.state_digest), so a hand
edit is a damaged checkpoint. A test that stands for a checkpoint written elsewhere (a newer
ehrfm's format, a CUDA node's dtype, an earlier step) edits the state and seals it again.
"""
from __future__ import annotations

import json
from pathlib import Path


def write_state(path: Path, state: dict) -> None:
    """Write `state` to `path` (a checkpoint's state.json) with its own digest made anew."""
    from ehrfm.checkpoint import STATE_DIGEST, state_digest

    path.write_text(json.dumps({**state, STATE_DIGEST: state_digest(state)}))
