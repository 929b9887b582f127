"""SMR serving: starting a local Triton server on an exported model repository and keeping it
serving (``smr serve``: launcher.py, supervisor.py, shm.py), probing it (``smr probe``), measuring
it (``smr bench``), and the Prometheus/Grafana set-up that watches its latency and restarts.

The Triton python models themselves live in ``triton_models/``; export copies them into the
repository, so the server never imports this package.
"""
