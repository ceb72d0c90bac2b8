"""Lagpilot operator: reads Kafka consumer lag and scales worker Deployments and their in-pod pools.

The data flows through four parts, one folder each:

* `kafka/`: one observation per Kafka cluster and interval for all its groups (and the topics a group owns);
* `core/`: pure decisions on those observations (policy, verdicts, time lag, the KEDA model, simulate);
* `kube/`: the CRD's models, the API calls, and the pure rules for what to write back;
* the kopf glue at this level: `handlers` (thin kopf handlers), `reconcile` (one poll of one resource:
  observe, decide, apply), `operator_metrics` and `cli`.
"""

__version__ = "0.1.0"
