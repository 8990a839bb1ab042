{{/* Common labels for every object the chart creates. */}}
{{- define "airssys-wasm.labels" -}}
app.kubernetes.io/name: airssys-wasm
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
