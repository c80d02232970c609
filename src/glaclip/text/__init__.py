"""The class names' side: the vocabulary syntax and its checks (``vocabulary``), CLIP's text
tower (``tower``), the encoder of query names with its prompt templates (``encoder``) and its
embedding cache on disk (``cache``).

May import: ``io.atomic`` (the cache's writes). Nothing of the model, images, evaluation, demo or
command line.
"""
