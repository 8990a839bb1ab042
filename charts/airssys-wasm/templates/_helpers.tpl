{{/* Common labels for every object the chart creates. */}}
{{- define "airssys-wasm.labels" -}}
app.kubernetes.io/name: airssys-wasm
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one part: include with (dict "root" $ "component" "operator"). */}}
{{- define "airssys-wasm.selectorLabels" -}}
app.kubernetes.io/name: airssys-wasm
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference from {repository, tag, digest}; the digest wins, the tag defaults to appVersion. */}}
{{- define "airssys-wasm.image" -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The operator's Service, which agents dial for artifacts. */}}
{{- define "airssys-wasm.operatorService" -}}
{{ .Release.Name }}-operator
{{- end -}}

{{/* The Pod Security "restricted" container context every container uses. */}}
{{- define "airssys-wasm.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The matching Pod context (emptyDir volumes writable by the group). */}}
{{- define "airssys-wasm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
