"""The model: image towers and their loading (``towers``, ``loading``, ``checkpoints``, ``hub``,
``sources``, ``identity``, ``tiny``), devices and processes (``device``, ``distributed``),
windows (``windows``), GLA's global attention and its kernels (``attention``, ``anchors``,
``blocked``), the base methods (``bases``: one file each), post-processing (``postprocess``,
``pamr``), what a Segmenter returns (``results``) and the ``Segmenter`` itself, which composes
them.

May import: ``config``, ``registry``, ``constants``, ``images``, ``text``, ``io.atomic`` (model
files are written atomically). No other I/O, evaluation, demo or command line.
"""
