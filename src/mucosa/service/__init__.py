"""The web service and viewer (``mucosa serve``): FastAPI app, background case worker, static viewer.

Needs the ``serve`` extra (``pip install 'mucosa[serve]'``). :func:`mucosa.service.app.create_app` builds the
application around :class:`mucosa.service.engine.Engine`, which runs the model on a case.
"""
