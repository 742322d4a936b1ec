"""Sweeps: plan an IsoFLOP grid of runs, launch them through submitit (SLURM or local), collect.

    from sweeps import plan_sweep, launch_sweep, LaunchConfig, status_rows, collect_sweep
    plan_sweep("tok", [1e12, 3e12], "sweep", sizes=5)
    launch_sweep("sweep", LaunchConfig(executor="slurm", partition="gpu", gpus_per_node=1, max_parallel=8))
    collect_sweep("sweep")            # -> sweep/results.parquet

Modules, in pipeline order: plan (SweepConfig, the IsoFLOP planner, run ids), job (the submitit
callable that trains one run and survives preemption), run_one (its trainer child process),
state (run states from files and the scheduler), launch (executors, idempotent relaunch),
collect (status table, results.parquet), cli (`ehrfm sweep plan|launch|status|collect`).
The public names below import lazily, so `import sweeps` stays light.
"""

from ehrfm.lazy import lazy_exports

_EXPORTS = {
    "SweepConfig": "sweeps.plan",
    "plan_sweep": "sweeps.plan",
    "load_sweep": "sweeps.plan",
    "make_plan": "sweeps.plan",
    "LaunchConfig": "sweeps.launch",
    "LaunchReport": "sweeps.launch",
    "launch_sweep": "sweeps.launch",
    "wait_for_runs": "sweeps.launch",
    "run_states": "sweeps.state",
    "status_rows": "sweeps.collect",
    "collect_sweep": "sweeps.collect",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
