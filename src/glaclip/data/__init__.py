"""Datasets: the benchmarks' folder layouts and label maps (``datasets``), presets and their
bundled class files (``presets``, ``classes/``), the check of a dataset before a run
(``check``), and the converters of ``glaclip prepare`` (``convert`` and one module per
dataset; ``tables``: their label tables for ``--help``).

May import: ``config``, ``atomic``, ``images``, ``text``. No model, I/O of results,
evaluation, demo or command line.
"""
