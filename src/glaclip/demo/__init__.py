"""The browser demo (``glaclip demo``): a Gradio page over one loaded Segmenter.

* ``glaclip.demo.logic``: a request without Gradio (check the inputs, segment, write the files
  ``glaclip segment`` writes), the method menu from the registry of base methods, and the
  ``FeatureStore`` that keeps the last image's features for new classes on the same photo.
* ``glaclip.demo.views``: what the page shows of a request, without Gradio.
* ``glaclip.demo.turns``: requests take turns on the one Segmenter, cancelled ones included,
  and a cancelled request stops at its next step.
* ``glaclip.demo.app``: the page (``build_app``) and its server (``serve``); needs Gradio (the
  ``demo`` extra), which only this module imports.

May import: ``config``, ``registry``, ``images``, ``text``, ``model``, ``io``, ``data``. No
evaluation or command line.
"""
