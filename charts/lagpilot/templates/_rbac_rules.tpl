{{/*
Exactly the API calls the operator makes, and nothing more. Keep in step with
tests/integration/test_rbac.py, which proves each allowed call and a set of refused ones.
*/}}

{{/* Rules for the namespaces the operator manages (a ClusterRole in cluster scope, a Role per
namespace in namespaced scope). */}}
{{- define "lagpilot.workloadRules" -}}
# The KafkaConsumerGroup resources: kopf watches them and patches its finalizer/annotations.
- apiGroups: ["lagpilot.io"]
  resources: ["kafkaconsumergroups"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["lagpilot.io"]
  resources: ["kafkaconsumergroups/status"]
  verbs: ["get", "patch", "update"]
# Worker Deployments: list/watch (the operator's in-memory view of them, kube/watch_cache.py), get when
# the watch has no entry; create/patch only the template-mode Deployment.
# No delete: owner references let the garbage collector remove what the operator created.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["get", "patch", "update"]
# The pool-size ConfigMap (<kcg>-lagpilot-pool) the workers watch; the operator watches them too (its
# managed-by label, filtered in the operator: a watch's label selector is not an RBAC restriction).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
# Kafka credentials named in a KafkaConsumerGroup's spec.kafka.security: read by name only
# (names come from user resources, so resourceNames cannot be fixed here; no list/watch).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# An Event for every scaling decision, and kopf's handler progress events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* kopf reads these cluster-wide in both scopes. */}}
{{- define "lagpilot.discoveryRules" -}}
# kopf scans the CRDs at start-up and watches them to notice resources appearing or going away.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# kopf lists/watches namespaces to follow namespace creation and deletion.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}

{{/* Peering: watch every peering object (kopf filters by name), write only our own. */}}
{{- define "lagpilot.peeringRules" -}}
{{- $resource := ternary "clusterkopfpeerings" "kopfpeerings" (eq .Values.rbac.scope "cluster") -}}
- apiGroups: ["kopf.dev"]
  resources: [{{ $resource | quote }}]
  verbs: ["list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: [{{ $resource | quote }}]
  resourceNames: [{{ include "lagpilot.peeringName" . | quote }}]
  verbs: ["get", "patch"]
{{- end }}

{{/* Sharding (shards > 1): the shard and member Leases, in the release namespace only. list every round, create for a
Lease seen for the first time, update to renew, take and release (a whole replace with the
resourceVersion read, so two replicas cannot both take one), delete for the member Lease of a replica
gone for ten Lease durations. */}}
{{- define "lagpilot.shardLeaseRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["list", "create", "update", "delete"]
{{- end }}
