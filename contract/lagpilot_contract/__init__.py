"""Contracts shared by the Lagpilot operator and worker: topic names, DLQ headers, pool size.

Both sides import this package and nothing else from each other, so the operator never imports
the worker runtime and the worker never imports kopf.
"""
