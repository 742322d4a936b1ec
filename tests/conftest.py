"""Shared, session-scoped fixtures: real data made once per test session.

The pipeline fixtures call each stage's public Python function exactly as the CLI does:
synthetic raw MIMIC-IV -> MEDS -> tokens -> a tiny trained run, plus the real public MIMIC-IV
demo from ../shared/data when it is there.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("EHRFM_QUIET", "1")
# Bars off whatever the shell exported: with EHRFM_QUIET=0 a bar drawn by a fixture made every later
# in-process one-line error start with a newline (tests/test_outputs.py failed). Tests of the bars
# set or delete it themselves (monkeypatch).
os.environ["EHRFM_QUIET"] = "1"
# A logger chosen in the shell that runs the suite (EHRFM_LOGGER=wandb or tensorboard, meant for one's
# own sweeps) must not reach the tests' runs: with wandb not installed every training test failed.
# Tests of EHRFM_LOGGER set it themselves, in the environment of the process they start.
os.environ.pop("EHRFM_LOGGER", None)
# The Ctrl-C tests model a terminal's foreground job: SIGINT at its default. A suite started as a
# background job of a script (`bash .ci/run &`, no job control) inherits SIGINT ignored, and so did
# every process it started, which then ignored the tests' Ctrl-C, as ehrfm must (ehrfm.io.keep_sigint_ignored).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO_ROOT = Path(__file__).resolve().parent.parent
MIMIC_DEMO = REPO_ROOT.parent / "shared" / "data" / "mimic-iv-demo-2.2"

# Sizes of the shared synthetic cohort: big enough for real structure, small enough for CI.
SYNTH_PATIENTS = 400
SYNTH_SEED = 0


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (it appends them to each node id)
def pytest_collection_modifyitems(config, items):
    """Group the tests for pytest-xdist (scripts/test.sh: `--dist loadgroup`): a file stays whole in one
    worker, so its module fixtures are made once, and every file that submits to the real SLURM
    cluster (a test marked `slurm`) shares one group. The single-node cluster has one
    slot per core and those tests hold jobs at fault points: two such files in two workers left each
    other's jobs PENDING past their 300 s guards (stop 53's CI, five tests)."""
    module_of = {item: item.nodeid.split("::")[0] for item in items}
    on_cluster = {module_of[item] for item in items if item.get_closest_marker("slurm")}
    for item in items:
        item.add_marker(pytest.mark.xdist_group("slurm-cluster" if module_of[item] in on_cluster else module_of[item]))
    # The longest units first (stable sort), so that none starts last, when the other workers are done:
    # the files with a test marked `slow` (the demo's), then the cluster's group.
    slow = {module_of[item] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (module_of[item] not in slow, module_of[item] not in on_cluster))


@pytest.hookimpl(optionalhook=True)  # an xdist hook, called in the controller: absent without xdist
def pytest_xdist_node_collection_finished(node, ids):
    """Refuse to run when xdist ignored the groups: on pytest 9.2 its `--dist loadgroup` no longer
    tags the node ids (pytest-xdist#1386) and spreads every test alone, SLURM files included, which
    made stop 53's CI fail on timing alone. pyproject's test extra keeps pytest below 9.2."""
    if node.config.getvalue("dist") == "loadgroup" and any("@" not in nodeid for nodeid in ids):
        pytest.exit(f"pytest-xdist's --dist loadgroup did not group the tests on pytest {pytest.__version__} "
                    "(pytest-xdist#1386): `pip install 'pytest<9.2'`, or run the suite in one process "
                    "(EHRFM_TEST_WORKERS=1 bash scripts/test.sh)", returncode=4)


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


def private_synth_pipeline(base: Path, n_patients: int, seed: int, labels: bool = False) -> dict[str, Path]:
    """A private synth -> etl -> tokenize (-> labels) chain under `base`, for destructive tests.

    Tests that try to make a command wipe or damage its own inputs use their own copy, never the
    session fixtures above: a regression there would corrupt every later test's data.
    Returns {"base", "raw", "meds", "tok"} (+ "labels") paths.
    """
    from tokenization.etl import etl
    from tokenization.synth import synthesize
    from tokenization.tokenize import tokenize

    paths = {"base": base, "raw": base / "raw", "meds": base / "meds", "tok": base / "tok"}
    synthesize(paths["raw"], n_patients=n_patients, seed=seed)
    etl(paths["raw"], paths["meds"])
    tokenize(paths["meds"], paths["tok"])
    if labels:
        from ehrfm.clinical.labels import make_labels, write_label_dir

        paths["labels"] = base / "labels"
        write_label_dir(*make_labels(paths["meds"], "all"), paths["labels"])
    return paths


def _etl(raw: Path, tmp_path_factory, folder: str) -> Path:
    from tokenization.etl import etl

    out = tmp_path_factory.mktemp(folder) / "meds"
    etl(raw, out)
    return out


def _tokenize(meds: Path, tmp_path_factory, folder: str) -> Path:
    from tokenization.tokenize import tokenize

    out = tmp_path_factory.mktemp(folder) / "tok"
    tokenize(meds, out)
    return out


def _stage_fixture(stage, upstream: str, folder: str):
    """A session fixture: `stage` (_etl or _tokenize) run once on the fixture named `upstream`."""

    @pytest.fixture(scope="session")
    def made(request, tmp_path_factory) -> Path:
        return stage(request.getfixturevalue(upstream), tmp_path_factory, folder)

    return made


synth_meds = _stage_fixture(_etl, "synth_raw", "synth_meds")
synth_tokens = _stage_fixture(_tokenize, "synth_meds", "synth_tok")
demo_meds = _stage_fixture(_etl, "mimic_demo_dir", "demo_meds")
demo_tokens = _stage_fixture(_tokenize, "demo_meds", "demo_tok")


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
