"""The Kafka side: everything that talks to brokers (or to Prometheus about them).

`cluster_observer` reads each Kafka cluster once per interval for all the groups on it (the rules for
sharing one read are pure, in `cluster_reads`); `kafka_lag`, `share_lag` and `prom_lag` are the lag
readers; `topics` / `topics_plan`, `dead_letter` and `redrive` manage the topics a group owns.
"""
