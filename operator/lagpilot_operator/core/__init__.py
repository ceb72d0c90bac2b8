"""The pure decision core: no Kafka, no Kubernetes, no clock of its own.

Observations (lag samples, time lag) go in; `policy.decide` turns them, with the memory of earlier
polls, into replicas and a pool size; `verdicts` says what a partition's progress means; `pause` reads
what a person asked for. `keda` is a model of KEDA's Kafka scaler and the HPA, and `simulate` (with
`plot`) replays traces through both, which is how policies are tuned without a cluster.
"""
