{{/*
Names, labels and the checks every template relies on.
*/}}

{{- define "api-router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name alone when it already contains the chart name.
*/}}
{{- define "api-router.fullname" -}}
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

{{- define "api-router.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "api-router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "api-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "api-router.labels" -}}
helm.sh/chart: {{ include "api-router.chart" . }}
{{ include "api-router.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: router
app.kubernetes.io/part-of: api-router
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "api-router.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "api-router.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "api-router.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The runtime config comes from a mounted file when etcd is not configured. */}}
{{- define "api-router.fileConfig" -}}
{{- if not .Values.router.etcdEndpoints }}true{{ end }}
{{- end }}

{{- define "api-router.runtimeConfigMapName" -}}
{{- .Values.runtimeConfig.existingConfigMap | default (printf "%s-runtime-config" (include "api-router.fullname" .)) }}
{{- end }}

{{/*
Seconds `router serve` gives uvicorn to finish in-flight requests after SIGTERM
(timeout_graceful_shutdown in src/router_impl/cli/commands.py; tools/helm_check.py keeps them equal).
*/}}
{{- define "api-router.uvicornGracefulSeconds" -}}30{{- end }}

{{/* Label matchers of every alert's series. */}}
{{- define "api-router.alertSelector" -}}
{{- if .Values.metrics.prometheusRule.selector }}
{{- .Values.metrics.prometheusRule.selector }}
{{- else }}
{{- printf "job=%q,namespace=%q" (include "api-router.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
Combinations values.schema.json cannot express; rendering fails with the reason.
*/}}
{{- define "api-router.validate" -}}
{{- $v := .Values }}
{{- if and $v.router.redisUrl $v.secrets.redisUrl.existingSecret }}
{{- fail "set either router.redisUrl or secrets.redisUrl.existingSecret, not both" }}
{{- end }}
{{- $needed := addf (float64 $v.lifecycle.preStopSleepSeconds) (float64 (include "api-router.uvicornGracefulSeconds" .)) (float64 $v.router.outboxDrainSeconds) }}
{{- if lt (float64 $v.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must cover lifecycle.preStopSleepSeconds + %s s uvicorn graceful shutdown + router.outboxDrainSeconds = %v s, or the outbox is cut off mid-drain" $v.terminationGracePeriodSeconds (include "api-router.uvicornGracefulSeconds" .) $needed) }}
{{- end }}
{{- if eq $v.dataVolume.type "persistentVolumeClaim" }}
{{- if not $v.dataVolume.persistentVolumeClaim.claimName }}
{{- fail "dataVolume.type persistentVolumeClaim needs dataVolume.persistentVolumeClaim.claimName" }}
{{- end }}
{{- if or $v.autoscaling.enabled (gt (int $v.replicaCount) 1) }}
{{- fail "dataVolume.type persistentVolumeClaim shares one data dir: only with replicaCount 1 and autoscaling off (use type ephemeral for a volume per pod)" }}
{{- end }}
{{- end }}
{{- if and $v.runtimeConfig.existingConfigMap $v.runtimeConfig.content }}
{{- fail "set either runtimeConfig.existingConfigMap or runtimeConfig.content, not both" }}
{{- end }}
{{- if and $v.router.etcdEndpoints $v.runtimeConfig.content }}
{{- fail "runtimeConfig.content is ignored when router.etcdEndpoints is set: load it into etcd (router config apply FILE) instead" }}
{{- end }}
{{- if $v.autoscaling.enabled }}
{{- if gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and (kindIs "invalid" $v.autoscaling.targetCPUUtilizationPercentage) (kindIs "invalid" $v.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- end }}
{{- if $v.podDisruptionBudget.enabled }}
{{- $min := $v.podDisruptionBudget.minAvailable }}
{{- $max := $v.podDisruptionBudget.maxUnavailable }}
{{- if and (not (kindIs "invalid" $min)) (not (kindIs "invalid" $max)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- $replicas := ternary $v.autoscaling.minReplicas $v.replicaCount $v.autoscaling.enabled }}
{{- if and (not (kindIs "invalid" $min)) (not (kindIs "string" $min)) (ge (int $min) (int $replicas)) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%v) must be below the replica count (%v), or no node can ever be drained" $min $replicas) }}
{{- end }}
{{- end }}
{{- if and (eq $v.lifecycle.preStopMode "sleepAction") (lt (int $v.lifecycle.preStopSleepSeconds) 1) }}
{{- fail "lifecycle.preStopMode sleepAction needs preStopSleepSeconds >= 1" }}
{{- end }}
{{- end }}
