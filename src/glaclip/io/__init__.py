"""Files out: atomic writes (``atomic``), output folders with their manifest and lock
(``outputs``), label PNGs and RGB files (``encode``), colours and overlays (``palette``,
``viz``), and the batch of ``glaclip segment`` (``batch``: read, segment, write).

May import: ``config``, ``constants``, ``images``, ``text``, ``model``. No evaluation, demo or
command line.
"""
