{{/* Chart name, overridable. */}}
{{- define "pdscaler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified name from the release: the release name alone when it already contains the
chart name (release "pdscaler" -> "pdscaler", not "pdscaler-pdscaler"), else "<release>-<name>".
*/}}
{{- define "pdscaler.fullname" -}}
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

{{/* "<fullname>-<suffix>", the full name shortened so that the result fits 63 characters. */}}
{{- define "pdscaler.suffixed" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (include "pdscaler.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix -}}
{{- end -}}

{{- define "pdscaler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pdscaler.labels" -}}
helm.sh/chart: {{ include "pdscaler.chart" . }}
{{ include "pdscaler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "pdscaler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pdscaler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "pdscaler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pdscaler.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Rules the operator needs in every namespace it watches (PDDeployments, /scale, events). */}}
{{- define "pdscaler.namespacedRules" -}}
# The custom resource: watched, status written, kopf's finalizer.
- apiGroups: [pdscaler.io]
  resources: [pddeployments]
  verbs: [get, list, watch, patch, update]
- apiGroups: [pdscaler.io]
  resources: [pddeployments/status]
  verbs: [get, patch, update]
# Scale targets: read for readiness, written only through /scale.
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  verbs: [get]
- apiGroups: [apps]
  resources: [deployments/scale, statefulsets/scale]
  verbs: [get, patch, update]
- apiGroups: [leaderworkerset.x-k8s.io]
  resources: [leaderworkersets]
  verbs: [get]
- apiGroups: [leaderworkerset.x-k8s.io]
  resources: [leaderworkersets/scale]
  verbs: [get, patch, update]
{{- range .Values.rbac.extraScaleTargets }}
- apiGroups: [{{ .apiGroup | quote }}]
  resources: [{{ .resource | quote }}]
  verbs: [get]
- apiGroups: [{{ .apiGroup | quote }}]
  resources: [{{ printf "%s/scale" .resource | quote }}]
  verbs: [get, patch, update]
{{- end }}
# Profiles in ConfigMaps.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
# Other autoscalers of the targets (docs/coexistence.md): listed, never written.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list]
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [list]
# Events on every scale and problem.
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* kopf's peering rules: the init container creates the object, kopf watches and patches it. */}}
{{- define "pdscaler.peeringVerbs" -}}
[get, list, watch, patch, create]
{{- end -}}
