"""Shared, session-scoped fixtures: real data made once per test session.

The pipeline fixtures call each stage's public Python function exactly as the CLI does:
synthetic raw MIMIC-IV -> MEDS -> tokens -> a tiny trained run, plus the real public MIMIC-IV
demo from ../shared/data when it is there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("EHRFM_QUIET", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
MIMIC_DEMO = REPO_ROOT.parent / "shared" / "data" / "mimic-iv-demo-2.2"

# Sizes of the shared synthetic cohort: big enough for real structure, small enough for CI.
SYNTH_PATIENTS = 400
SYNTH_SEED = 0


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core box: 1 intra-op thread is ~8x faster than 2 under load.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    """A small hand-made token dir (test_train.make_token_dir), one per test module."""
    from test_train import make_token_dir

    return make_token_dir(tmp_path_factory.mktemp("tok") / "tok")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def mimic_demo_dir() -> Path:
    if not (MIMIC_DEMO / "hosp" / "patients.csv.gz").exists():
        pytest.skip(f"real MIMIC-IV demo not found at {MIMIC_DEMO}")
    return MIMIC_DEMO


@pytest.fixture(scope="session")
def synth_raw(tmp_path_factory) -> Path:
    from tokenization.synth import synthesize

    out = tmp_path_factory.mktemp("synth") / "raw"
    synthesize(out, n_patients=SYNTH_PATIENTS, seed=SYNTH_SEED)
    return out


@pytest.fixture(scope="session")
def synth_meds(synth_raw, tmp_path_factory) -> Path:
    from tokenization.etl import etl

    out = tmp_path_factory.mktemp("synth_meds") / "meds"
    etl(synth_raw, out)
    return out


@pytest.fixture(scope="session")
def synth_tokens(synth_meds, tmp_path_factory) -> Path:
    from tokenization.tokenize import tokenize

    out = tmp_path_factory.mktemp("synth_tok") / "tok"
    tokenize(synth_meds, out)
    return out


@pytest.fixture(scope="session")
def demo_meds(mimic_demo_dir, tmp_path_factory) -> Path:
    from tokenization.etl import etl

    out = tmp_path_factory.mktemp("demo_meds") / "meds"
    etl(mimic_demo_dir, out)
    return out


@pytest.fixture(scope="session")
def demo_tokens(demo_meds, tmp_path_factory) -> Path:
    from tokenization.tokenize import tokenize

    out = tmp_path_factory.mktemp("demo_tok") / "tok"
    tokenize(demo_meds, out)
    return out


@pytest.fixture(scope="session")
def tiny_run(synth_tokens, tmp_path_factory) -> Path:
    """A tiny model really trained on the synthetic tokens (seconds on CPU)."""
    from ehrfm.config import TrainConfig
    from ehrfm.train import train

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = TrainConfig(
        tokens_dir=str(synth_tokens),
        out_dir=str(out),
        n_layer=2,
        d_model=32,
        n_head=2,
        context=128,
        tokens=60_000,
        batch_size=8,
        seed=0,
    )
    result = train(cfg)
    assert result["status"] == "completed", result
    return out
