"""Helpers shared by test modules (and the serving benchmarks), each defined once.

- :mod:`tests.support.serving`: a tiny model in a BentoML store, loopback HTTP calls, a real
  ``bentoml serve`` process started, awaited and stopped by its process group;
- :mod:`tests.support.hostile`: the hostile request bodies of the serving hardening;
- :mod:`tests.support.drift`: inference logs, drift results and an SMTP inbox.

Free ports come from the product's own :func:`flows.core.http.free_port`.
"""
