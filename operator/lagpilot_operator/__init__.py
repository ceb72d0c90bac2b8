"""Lagpilot operator: reads Kafka consumer lag and scales worker Deployments and their in-pod pools."""

__version__ = "0.1.0"
