"""The service's routes, one ``APIRouter`` per resource; :func:`mucosa.service.app.create_app` puts the first five
under ``/v1`` behind the token check.

- :mod:`~mucosa.service.routes.model`: ``GET /model``, the model card.
- :mod:`~mucosa.service.routes.predict`: ``POST /predict``, one image.
- :mod:`~mucosa.service.routes.cases`: ``/cases``, a video or several images processed in the background.
- :mod:`~mucosa.service.routes.similar`: ``/cases/{id}/similar``, the atlas's most similar confirmed cases.
- :mod:`~mucosa.service.routes.reports`: ``/cases/{id}/report.json|html|pdf``, the case report.
- :mod:`~mucosa.service.routes.health`: ``GET /healthz`` and the viewer at ``/`` (no token).

:mod:`~mucosa.service.routes.common` holds what the routes that take files share; what a route needs from the
server (engine, case store, settings) comes from :mod:`mucosa.service.dependencies`.
"""
