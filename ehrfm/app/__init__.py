"""The app layer: the `ehrfm` command line and the demo, on top of every stage.

The four stage packages (tokenization, ehrfm's base and model, sweeps, analysis) never import
from here; tests/test_layers.py enforces it. A module that imports two or more of
`tokenization`, `sweeps` and `analysis` (or dispatches to them by module name) belongs here.
"""
