"""`ehrfm export RUN --out DIR`: a thin wrapper over ehrfm.export.export_hf."""

from __future__ import annotations

from ehrfm.cli_args import command


def _export(args) -> int:
    from pathlib import Path

    from ehrfm.export import export_hf
    from ehrfm.io import read_json, summary, warn

    out = export_hf(args.run, args.out, tokens_dir=args.tokens, overwrite=args.overwrite,
                    allow_incomplete=args.allow_incomplete)
    summary(f"export: {args.run} -> {out} (Hugging Face LlamaForCausalLM: config.json, model.safetensors, tokenizer.json)")
    made = read_json(Path(out) / "config.json", "exported config").get("ehrfm", {})
    if made.get("status") not in (None, "completed"):
        warn(f"{args.run} did not complete (status {made['status']}, step {made.get('step')} of {made.get('steps')}): "
             f"{out} holds its last checkpoint, recorded in its config.json under \"ehrfm\"", "export")
    return 0


def register(sub) -> None:
    """Add the `ehrfm export` subcommand to the subparsers action `sub`."""
    p = command(
        sub, "export", _export,
        help="write a run's model as a Hugging Face LlamaForCausalLM directory",
        description="Write RUN's trained model as a Hugging Face LlamaForCausalLM directory (config.json, "
        "model.safetensors, tokenizer.json over the event vocabulary), loadable with "
        "AutoModelForCausalLM.from_pretrained(DIR) and by vLLM/SGLang. Refuses an architecture Llama cannot express.",
    )
    p.add_argument("run", metavar="RUN", help="a completed run dir")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to create")
    p.add_argument("--tokens", default=None, metavar="TOK", help="the run's token dir (default: the one in RUN/config.json)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (only an output ehrfm wrote)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="export the last checkpoint of a run that did not complete (interrupted, failed, diverged)")
