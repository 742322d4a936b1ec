"""`ehrfm export` and `ehrfm.load_model`: a real trained run read back by Hugging Face transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from state_edits import write_state

torch = pytest.importorskip("torch")


def _ids(td, n_rows=3, T=40):
    """Real token rows from the tuning split (not random ids: real co-occurrences)."""
    split = td.split("tuning")
    rows = []
    for i in range(n_rows):
        tokens, _ = split.subject(i)
        row = np.resize(tokens.astype(np.int64), T)
        rows.append(row)
    return torch.from_numpy(np.stack(rows))


def test_load_model_returns_logits(tiny_run, synth_tokens):
    import ehrfm
    from ehrfm.tokens import TokenDir

    td = TokenDir(synth_tokens)
    model = ehrfm.load_model(tiny_run)
    ids = _ids(td)
    with torch.no_grad():
        logits = model(ids)
        ref, _ = model.gpt(ids)
    assert logits.shape == (3, 40, td.vocab_size)
    assert torch.equal(logits, ref)
    assert not model.training


def test_hf_export_matches_logits(tiny_run, synth_tokens, tmp_path):
    transformers = pytest.importorskip("transformers")
    import ehrfm
    from ehrfm.tokens import TokenDir

    td = TokenDir(synth_tokens)
    out = tmp_path / "hf"
    r = subprocess.run([sys.executable, "-m", "ehrfm", "export", str(tiny_run), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    # the weights readable as the config beside them is (safetensors wrote them 0600: a shared dir gave no model)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"], modes

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    cfg = json.loads((tiny_run / "checkpoint" / "model_config.json").read_text())
    assert hf.config.rms_norm_eps == cfg["norm_eps"] and not hf.config.tie_word_embeddings
    ids = _ids(td, T=128)  # the full context: RoPE at every position
    with torch.no_grad():
        ours = ehrfm.load_model(tiny_run)(ids)
        theirs = hf(ids).logits
    err = (ours - theirs).abs().max().item()
    assert err < 1e-4, err
    # a wrong RoPE layout or a swapped gate/up would be far off: the check can fail
    assert ours.abs().max().item() > 1.0

    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert len(tok) == td.vocab_size
    row = ids.flatten().tolist()  # every event string, spaces and "AGE//UNK" included
    assert tok(" ".join(td.decode(row)), add_special_tokens=False)["input_ids"] == row
    assert tok.convert_ids_to_tokens(tok.pad_token_id) == "PAD" and tok.eos_token == "TIMELINE_END"


def _copy_run(run, dst):
    shutil.copytree(run, dst)
    return dst


def _record_checksums(run):
    """Re-record the checkpoint's sha256s, as a trainer that wrote these files itself would."""
    import hashlib

    state_path = run / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    state["files"] = {name: hashlib.sha256((run / "checkpoint" / name).read_bytes()).hexdigest() for name in state["files"]}
    write_state(state_path, state)


def test_export_refuses_what_llama_cannot_express(tiny_run, tmp_path):
    from safetensors.torch import load_file, save_file

    # a GELU MLP recorded in the model config
    run = _copy_run(tiny_run, tmp_path / "gelu")
    p = run / "checkpoint" / "model_config.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "activation": "gelu"}))
    _record_checksums(run)
    r = subprocess.run([sys.executable, "-m", "ehrfm", "export", str(run), "--out", str(tmp_path / "o1")], capture_output=True, text=True)
    assert r.returncode == 2 and "activation='gelu'" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o1").exists()

    # a tensor with no Llama counterpart (a bias)
    run = _copy_run(tiny_run, tmp_path / "bias")
    f = run / "checkpoint" / "model.safetensors"
    t = load_file(str(f))
    t["blocks.0.attn.proj.bias"] = torch.zeros(t["blocks.0.attn.proj.weight"].shape[0])
    save_file(t, str(f))
    _record_checksums(run)
    r = subprocess.run([sys.executable, "-m", "ehrfm", "export", str(run), "--out", str(tmp_path / "o2")], capture_output=True, text=True)
    assert r.returncode == 2 and "blocks.0.attn.proj.bias" in r.stderr, r.stderr
    assert not (tmp_path / "o2").exists()


def test_export_refuses_failed_run(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path / "failed")
    res = run / "result.json"
    res.write_text(json.dumps({**json.loads(res.read_text()), "status": "diverged"}))
    r = subprocess.run([sys.executable, "-m", "ehrfm", "export", str(run), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "diverged" in r.stderr, r.stderr


@pytest.mark.parametrize("damage", ["bit flip", "truncated", "zero bytes", "run config"])
def test_export_refuses_a_damaged_checkpoint_or_run_config(tiny_run, tmp_path, damage):
    """A checkpoint file that fails its sha256 (or cannot be read) is never exported: one line naming it."""
    run = _copy_run(tiny_run, tmp_path / "run")
    f = run / "checkpoint" / "model.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "bit flip":  # in the weights, past the header: still a readable safetensors file
        data[-17] ^= 0x10
        f.write_bytes(bytes(data))
    elif damage == "truncated":
        f.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "zero bytes":
        f.write_bytes(b"")
    else:
        (run / "config.json").write_text('{"train": {"tokens_dir"')  # torn
    out = tmp_path / "hf"
    r = subprocess.run([sys.executable, "-m", "ehrfm", "export", str(run), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    named = "config.json" if damage == "run config" else "checkpoint/model.safetensors"
    assert named in lines[0] and "damaged" in lines[0], lines
    assert not out.exists()
