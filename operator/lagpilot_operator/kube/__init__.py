"""The Kubernetes side: the CRD's models and its generation, the API calls, and what is written back.

`models` (pydantic) is the schema, `crdgen` turns it into the CRD; `kube_io` holds the API calls;
`watch_cache` is what the operator's watch shows of Deployments and pool ConfigMaps (read instead of a
GET per poll); `conditions`, `writes` (whether a status or Deployment write is due) and `scale_apply` decide what to
write, purely; `worker_config` is what the worker Pods are told. `shards` decides, purely, which
operator replica serves which resource (shard Leases, their balance, the fencing token on writes) and
`shard_keeper` makes its Lease calls.
"""
