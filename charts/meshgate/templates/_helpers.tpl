{{/* Names, labels and small shared values of the meshgate chart. */}}

{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "meshgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: fullnameOverride, else the release name (when it contains the chart name), else release-chart. */}}
{{- define "meshgate.fullname" -}}
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

{{- define "meshgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "meshgate.labels" -}}
helm.sh/chart: {{ include "meshgate.chart" . }}
{{ include "meshgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshgate
{{- end }}

{{/* Selector of the meshgate pods (immutable once installed). */}}
{{- define "meshgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end }}

{{/* Redis (in-chart) names and labels. */}}
{{- define "meshgate.redis.fullname" -}}
{{- printf "%s-redis" (include "meshgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "meshgate.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "meshgate.redis.labels" -}}
helm.sh/chart: {{ include "meshgate.chart" . }}
{{ include "meshgate.redis.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshgate
{{- end }}

{{- define "meshgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meshgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the ConfigMap holding the policy. */}}
{{- define "meshgate.policyConfigMap" -}}
{{- if .Values.policy.existingConfigMap }}
{{- .Values.policy.existingConfigMap }}
{{- else }}
{{- printf "%s-policy" (include "meshgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Image reference: repository@digest, else repository:tag (default appVersion). */}}
{{- define "meshgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* More than one pod can run: gates the PodDisruptionBudget. */}}
{{- define "meshgate.multiReplica" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}true{{- end }}
{{- end }}

{{/* Namespaces allowed to reach the gRPC ports. */}}
{{- define "meshgate.gatewayNamespaces" -}}
{{- $ns := list }}
{{- if .Values.networkPolicy.gatewayNamespaces }}
{{- $ns = .Values.networkPolicy.gatewayNamespaces }}
{{- else }}
{{- if .Values.istio.enabled }}{{- $ns = append $ns .Values.istio.gatewayNamespace }}{{- end }}
{{- if .Values.envoyGateway.enabled }}{{- $ns = append $ns .Values.envoyGateway.proxyNamespace }}{{- end }}
{{- end }}
{{- toJson (uniq $ns) }}
{{- end }}

{{/*
Checks that cannot be written in values.schema.json: they fail the render with a message saying what
to change.
*/}}
{{- define "meshgate.validate" -}}
{{- if and (eq .Values.redis.mode "memory") (include "meshgate.multiReplica" .) }}
{{- fail "redis.mode=memory keeps rate-limit counters per pod: use redis.mode=inChart or external with more than one replica or with autoscaling" }}
{{- end }}
{{- if and (eq .Values.redis.mode "external") (not (or .Values.redis.external.url .Values.redis.external.existingSecret)) }}
{{- fail "redis.mode=external needs redis.external.url or redis.external.existingSecret" }}
{{- end }}
{{- if and (not .Values.policy.existingConfigMap) (not .Values.policy.inline) }}
{{- fail "set policy.inline (the policy document) or policy.existingConfigMap" }}
{{- end }}
{{- if and (or .Values.istio.enabled .Values.envoyGateway.enabled) (not .Values.policy.existingConfigMap) }}
{{- $mesh := default dict .Values.policy.inline.mesh }}
{{- $svc := default "meshgate" $mesh.service }}
{{- $ns := default "meshgate" $mesh.namespace }}
{{- if ne $svc (include "meshgate.fullname" .) }}
{{- fail (printf "policy.inline.mesh.service is %q but the Service is named %q: `meshgate render` would point the gateway at the wrong host (set fullnameOverride or mesh.service)" $svc (include "meshgate.fullname" .)) }}
{{- end }}
{{- range $port := list "extauthz" "ratelimit" }}
{{- $want := index $.Values.ports $port }}
{{- $got := index $mesh (printf "%s_port" $port) | default $want }}
{{- if ne (int $got) (int $want) }}
{{- fail (printf "policy.inline.mesh.%s_port is %v but ports.%s is %v: the rendered gateway objects would call the wrong port" $port $got $port $want) }}
{{- end }}
{{- end }}
{{- if ne $ns .Release.Namespace }}
{{- fail (printf "policy.inline.mesh.namespace is %q but the release namespace is %q: `meshgate render` would point the gateway at the wrong host" $ns .Release.Namespace) }}
{{- end }}
{{- end }}
{{- end }}
