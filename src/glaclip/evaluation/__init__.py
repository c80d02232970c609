"""Evaluation on the benchmarks: metrics (``metrics``), one benchmark's task and its resume
state (``tasks``, ``state``), the evaluation loop (``run``), result files (``reports``), the
paper's Table 1 (``table``, ``table_report``), the data check (``checks``) and its time
estimate (``estimate``).

May import: ``config``, ``registry``, ``images``, ``text``, ``model``, ``io``, ``data``. No
demo or command line.
"""
