{{/* Names and labels shared by every template. */}}
{{- define "cascade.name" -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}{{- end -}}

{{- define "cascade.labels" -}}
app.kubernetes.io/name: cascade
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
cascade.dev/region: {{ .Values.region }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "edge"). */}}
{{- define "cascade.selector" -}}
app.kubernetes.io/name: cascade
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cascade.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "cascade.clusterSecretName" -}}
{{ .Values.secrets.existingSecret | default (printf "%s-cluster" (include "cascade.name" .)) }}
{{- end -}}

{{/* How nodes of this release reach the control plane. */}}
{{- define "cascade.controlPlaneUrl" -}}
{{- if .Values.controlPlane.enabled -}}
http://{{ include "cascade.name" . }}-control-plane:8080
{{- else -}}
{{ required "controlPlane.url is required when the control plane runs in another release" .Values.controlPlane.url }}
{{- end -}}
{{- end -}}

{{/* Edge i's signaling host: (dict "ctx" $ "pod" "cascade-edge-0"). */}}
{{- define "cascade.edgeHost" -}}
{{ .ctx.Values.edge.hostTemplate | replace "{pod}" .pod | replace "{region}" .ctx.Values.region | replace "{domain}" .ctx.Values.domain }}
{{- end -}}

{{/* Pod-level security: non-root (the image's uid 10001), no privilege. */}}
{{- define "cascade.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "cascade.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The [telemetry] section every service gets. */}}
{{- define "cascade.telemetry" -}}
{{- dict "log_filter" .Values.telemetry.logFilter "log_format" "json" | toJson -}}
{{- end -}}

{{/* A NetworkPolicy peer: every pod of namespace `.`. */}}
{{- define "cascade.fromNamespace" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
{{- end }}
