"""Images in: reading a file, a PIL image or an array as RGB (``read``, with Pillow imported
when the first image is read; ``pngcheck``, the rows a PNG really holds), and preparing it for
the network (``prepare``: the protocol resize with OpenCV, the CLIP normalisation).

May import: ``constants``. Nothing of the model, text, I/O, evaluation, demo or command line.
"""
