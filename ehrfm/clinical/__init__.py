"""Clinical tasks: labels, probes, fine-tuned heads, zero-shot rollout, count baselines."""
