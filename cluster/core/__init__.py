"""The base layer: settings, errors, the data contract, storage back-ends, the lake catalog,
privacy primitives and feature encoders.

Everything else imports it; it imports nothing from ``spark_jobs``, ``ray_apps`` or the entry
points (``cluster.cli``, ``cluster.datagen``, ``cluster.provision``). ``lint-imports`` checks it.
"""
