"""BentoML serving: the auction service, its process launcher and its client backend.

- :mod:`serving.bento.service`: the ``@bentoml.service`` (imports bentoml; loaded by
  ``bentoml serve``, never by this package).
- :mod:`serving.bento.process`: :func:`start_bento` / :class:`BentoProcess`.
- :mod:`serving.bento.client`: :class:`BentoBackend`, the :class:`ModelBackend`.
- :mod:`serving.bento.codec`: the wire format; :mod:`serving.bento.models`: the models.
"""

from serving.bento.client import BentoBackend
from serving.bento.process import BentoProcess, start_bento

__all__ = ["BentoBackend", "BentoProcess", "start_bento"]
