"""Serving and scale-out around the torch-free runtime (no torch here either).

- ``serving.triton_model``: the Triton python-backend model (``export triton --backend python`` writes a repository
  whose ``model.py`` imports it).
- ``serving.http_api``: the request / response format of ``POST /classify`` (image bytes or a JSON batch of base64
  images -> labels, probabilities, the artifact digest), without a web framework.
- ``serving.ray_app``: ``clip-debias serve``: a Ray Serve application (``@serve.batch``) with ``/classify``,
  ``/healthz`` and Prometheus metrics; needs the ``[serve]`` extra.
- ``serving.ray_verify``: ``clip-debias verify --engine ray``: the verification as a Ray Data pipeline; needs the
  ``[ray]`` extra.
"""
