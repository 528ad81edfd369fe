{{/* Names and labels, as `helm create` makes them. */}}
{{- define "aep.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aep.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aep.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aep.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aep.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "aep.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aep-flow-exporter
{{- end -}}

{{- define "aep.secretName" -}}
{{- .Values.credentials.existingSecret | default (printf "%s-credentials" (include "aep.fullname" .)) -}}
{{- end -}}

{{/* The exporter's config file: the values' config with what the chart owns (the state volume, the ports). */}}
{{- define "aep.config" -}}
{{- $owned := dict "state" (dict "path" "/var/lib/aep-flow-exporter/state.db") "server" (dict "listen" (printf "0.0.0.0:%d" (int .Values.service.port))) -}}
{{- if .Values.webhook.enabled -}}
{{- $_ := set $owned "events" (dict "webhook" (dict "listen" (printf "0.0.0.0:%d" (int .Values.webhook.port)) "path" .Values.webhook.path)) -}}
{{- end -}}
{{- toYaml (mergeOverwrite (deepCopy .Values.config) $owned) -}}
{{- end -}}
