{{- define "lagpilot-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lagpilot-worker.fullname" -}}
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

{{- define "lagpilot-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lagpilot-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lagpilot-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "lagpilot-worker.labels" -}}
helm.sh/chart: {{ include "lagpilot-worker.chart" . }}
{{ include "lagpilot-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lagpilot
{{- end }}

{{- define "lagpilot-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lagpilot-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lagpilot-worker.consumerGroupName" -}}
{{- default (include "lagpilot-worker.fullname" .) .Values.consumerGroup.name }}
{{- end }}

{{/* The pool-size ConfigMap to watch (lagpilot_contract.pool.pool_configmap_name), or "". */}}
{{- define "lagpilot-worker.poolConfigMap" -}}
{{- if .Values.consumerGroup.create }}
{{- printf "%s-lagpilot-pool" (include "lagpilot-worker.consumerGroupName" .) }}
{{- else }}
{{- .Values.poolConfigMap }}
{{- end }}
{{- end }}

{{- define "lagpilot-worker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "lagpilot-worker.validate" -}}
{{- if .Values.consumerGroup.create }}
{{- $pool := .Values.consumerGroup.pool }}
{{- if not (and (le (int $pool.min) (int $pool.initial)) (le (int $pool.initial) (int $pool.max))) }}
{{- fail (printf "consumerGroup.pool must satisfy min <= initial <= max (got min=%d initial=%d max=%d)" (int $pool.min) (int $pool.initial) (int $pool.max)) }}
{{- end }}
{{- $replicas := .Values.consumerGroup.replicas }}
{{- if gt (int $replicas.min) (int $replicas.max) }}
{{- fail (printf "consumerGroup.replicas must satisfy min <= max (got min=%d max=%d)" (int $replicas.min) (int $replicas.max)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* deadLetter.retryTiers as LAGPILOT_RETRY_DELAYS ("10,60"), or "" without tiers. */}}
{{- define "lagpilot-worker.retryDelays" -}}
{{- $delays := list }}
{{- range ((.Values.consumerGroup.deadLetter).retryTiers | default list) }}
{{- $delays = append $delays (int .delaySeconds | toString) }}
{{- end }}
{{- join "," $delays }}
{{- end }}
