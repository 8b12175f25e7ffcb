"""Serving and scale-out around the torch-free runtime (no torch here either).

- ``serving.http_api``: the request / response format of ``/classify``, ``/embed``, ``/embed-text`` (bytes in,
  JSON-able dicts out; request limits), without a web framework.
- ``serving.batcher``: the asyncio dynamic batcher in front of one model.
- ``serving.metrics``: the Prometheus metrics of the default server (the names ``docs/serving.md`` lists).
- ``serving.app``: the ASGI application (routes, bounded body reading, time budget, queue bound).
- ``serving.server``: ``clip-debias serve`` (default engine): uvicorn running the app, one process; needs the
  ``[serve]`` extra.
- ``serving.ray_app``: ``clip-debias serve --engine ray``: a Ray Serve application for clusters; needs
  ``[ray-serve]``.
- ``serving.ray_verify``: ``clip-debias verify --engine ray``: the verification as a Ray Data pipeline; ``[ray]``.
- ``serving.triton_model``: the Triton python-backend model (``export triton --backend python`` writes a repository
  whose ``model.py`` imports it).
- ``serving.loadtest``: a bounded loopback load generator (tests and ``benchmarks/bench_serving.py``).
"""
