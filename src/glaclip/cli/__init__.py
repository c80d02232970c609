"""The command line (``glaclip segment|eval|prepare|demo|tiny-models``): the parser
(``parser``, with every flag from ``options``; it imports no PyTorch, so that ``--help``
answers at once), the commands (``main``), and their helpers (``prepare``, ``server``,
``terms``, ``tiny``). Thin: it parses, calls the library and chooses exit codes.

May import everything; nothing imports it.
"""
