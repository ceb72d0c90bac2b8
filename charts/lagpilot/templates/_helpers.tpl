{{/* Chart name, truncated to the 63 characters a DNS-1123 label allows. */}}
{{- define "lagpilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name used for every object of this chart. */}}
{{- define "lagpilot.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lagpilot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lagpilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lagpilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "lagpilot.labels" -}}
helm.sh/chart: {{ include "lagpilot.chart" . }}
{{ include "lagpilot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lagpilot
{{- end }}

{{- define "lagpilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lagpilot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Cluster-scoped objects (ClusterRole, ClusterRoleBinding, ClusterKopfPeering) share one name space
across the cluster: qualify them with the release namespace so two releases of the same name in
different namespaces do not collide.
*/}}
{{- define "lagpilot.clusterObjectName" -}}
{{- printf "%s-%s" .Release.Namespace (include "lagpilot.fullname" .) | trunc 253 | trimSuffix "-" }}
{{- end }}

{{/* A ClusterKopfPeering is cluster-scoped, so its default name carries the release namespace. */}}
{{- define "lagpilot.peeringName" -}}
{{- if .Values.peering.name }}
{{- .Values.peering.name }}
{{- else if eq .Values.rbac.scope "cluster" }}
{{- include "lagpilot.clusterObjectName" . }}
{{- else }}
{{- include "lagpilot.fullname" . }}
{{- end }}
{{- end }}

{{- define "lagpilot.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The namespaces of namespaced mode, as a JSON list (empty list in cluster mode). */}}
{{- define "lagpilot.watchNamespaces" -}}
{{- if eq .Values.rbac.scope "namespaced" }}
{{- if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- else }}
{{- list | toJson }}
{{- end }}
{{- end }}

{{/* Cross-field checks JSON Schema cannot phrase clearly; each fails with what to change. */}}
{{- define "lagpilot.validate" -}}
{{- if and (gt (int .Values.shards) 1) (le (float64 .Values.shardLease.durationSeconds) (mulf 2 .Values.shardLease.renewSeconds)) }}
{{- fail (printf "shardLease.durationSeconds=%v must exceed twice shardLease.renewSeconds=%v: a holder stops acting one renew period before its Lease could expire, so it would stop between renewals" .Values.shardLease.durationSeconds .Values.shardLease.renewSeconds) }}
{{- end }}
{{- if and (not .Values.peering.enabled) (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "replicaCount=%d needs peering.enabled=true: without kopf peering every replica would scale the same groups" (int .Values.replicaCount)) }}
{{- end }}
{{- end }}

{{/*
The operator's shell command. kopf pauses *every* peer that sees another with the same priority,
so each pod needs its own: a CRC-32 of the pod name, made negative so a developer's
`kopf run --dev` (priority 666) or a default `kopf run` (priority 0) against the same peering
outranks the in-cluster replicas, as kopf intends.

A container the kubelet restarts in the same pod (the leader killed or crashed) keeps its peer
identity (the pod name) but comes back a billion below every fresh replica: its first keep-alive
overwrites the dead leader's record with that lower priority, so a standby replica takes over at
once instead of waiting for the record to expire (peering lifetime, 60 s), and a replica that keeps
crashing stops winning the leadership back. The marker lives in the pod's /tmp emptyDir, which
outlives a container but not the pod.

Replicas that start together (an install, a node coming back) would each resume if their first look
at the peering object does not show the other yet: kopf only learns of a peer from its keep-alive.
So with several replicas a fresh container first writes its own entry (`kopf freeze` with the pod's
identity and priority; `kopf run` then keeps that entry alive as its own), then waits until the
peering shows replicaCount live entries (`lagpilot peering-wait`), at most peering.announceSeconds: a
replica whose peers cannot start still runs, later. (A fixed sleep of 5 s was tried first: on a busy
node two replicas of one install started more than 5 s apart, and the first acted alone for 2 s.)
*/}}
{{- define "lagpilot.operatorScript" -}}
{{- $args := list "--module=lagpilot_operator.handlers" }}
{{- $args = append $args (printf "--log-format=%s" .Values.logFormat) }}
{{- $args = append $args (printf "--liveness=http://0.0.0.0:%d/healthz" (int .Values.liveness.port)) }}
{{- if .Values.peering.enabled }}
{{- $args = append $args (printf "--peering=%s" (include "lagpilot.peeringName" .)) }}
{{- $args = append $args "--priority=\"$priority\"" }}
{{- else }}
{{- $args = append $args "--standalone" }}
{{- end }}
{{- $scope := list }}
{{- if eq .Values.rbac.scope "cluster" }}
{{- $scope = append $scope "--all-namespaces" }}
{{- else }}
{{- range $ns := (include "lagpilot.watchNamespaces" . | fromJsonArray) }}
{{- $scope = append $scope (printf "--namespace=%s" $ns) }}
{{- end }}
{{- end }}
{{- $args = concat $args $scope }}
{{- range .Values.extraArgs }}
{{- $args = append $args (squote .) }}
{{- end -}}
set -eu
{{- if .Values.peering.enabled }}
rank=$(( $(printf '%s' "$POD_ID" | cksum | cut -d ' ' -f 1) % 1000000000 ))
marker=${LAGPILOT_RESTART_MARKER:-}
if [ -n "$marker" ] && [ -e "$marker" ]; then
  priority=$(( -1000000001 - rank )); fresh=false
else
  priority=$(( -1 - rank )); fresh=true
fi
if [ -n "$marker" ]; then : > "$marker"; fi
{{- if and (gt (int .Values.replicaCount) 1) (gt (int .Values.peering.announceSeconds) 0) }}
if $fresh; then
  # Announce this replica in the peering before it may act (lagpilot.operatorScript's comment). kopf freeze
  # announces nothing while the peering object is missing, and Helm creates it after the Deployment.
  lagpilot peering-wait --peering={{ include "lagpilot.peeringName" . }} --exists \
    --timeout={{ int .Values.peering.announceSeconds }} {{ join " " $scope }} \
    || echo "peering lookup failed; announcing anyway" >&2
  kopf freeze --quiet --peering={{ include "lagpilot.peeringName" . }} --id="$POD_ID" --priority="$priority" \
    --lifetime=60 {{ join " " $scope }} || echo "peering announcement failed; starting anyway" >&2
  lagpilot peering-wait --peering={{ include "lagpilot.peeringName" . }} --expect={{ int .Values.replicaCount }} \
    --timeout={{ int .Values.peering.announceSeconds }} {{ join " " $scope }} \
    || echo "peering wait failed; starting anyway" >&2
fi
{{- end }}
{{- end }}
exec kopf run \
  {{ join " \\\n  " $args }}
{{- end }}
