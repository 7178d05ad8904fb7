{{/* Names and labels shared by every template. */}}

{{- define "shcr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shcr.fullname" -}}
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

{{- define "shcr.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "shcr.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shcr
{{- end }}

{{- define "shcr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shcr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The API server pods. */}}
{{- define "shcr.serverSelectorLabels" -}}
{{ include "shcr.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/* The migration job's pods. */}}
{{- define "shcr.migrateSelectorLabels" -}}
{{ include "shcr.selectorLabels" . }}
app.kubernetes.io/component: migrate
{{- end }}

{{- define "shcr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shcr.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shcr.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "shcr.publicUrl" -}}
{{- if .Values.publicUrl }}
{{- .Values.publicUrl }}
{{- else if .Values.ingress.enabled }}
{{- printf "https://%s" .Values.ingress.host }}
{{- end }}
{{- end }}

{{/*
Data files of one folder (files/search-params or files/consent-policies) that go into its
ConfigMap: every file but READMEs and the ones the binary embeds. A file too large for a
ConfigMap stops the render with a message.
Arguments: (dict "root" $ "dir" "search-params" "embedded" list)
*/}}
{{- define "shcr.dataFiles" -}}
{{- $root := .root }}
{{- $out := dict }}
{{- range $path, $_ := $root.Files.Glob (printf "files/%s/*" .dir) }}
{{- $base := base $path }}
{{- if and (not (hasPrefix "README" $base)) (not (has $base $.embedded)) }}
{{- $content := $root.Files.Get $path }}
{{- if gt (len $content) (int $root.Values.dataFiles.maxFileBytes) }}
{{- fail (printf "%s/%s is %d bytes, more than dataFiles.maxFileBytes (%d): a ConfigMap holds at most 1 MiB. Embed it in the binary and list it under dataFiles.*.embedded, or split it." $.dir $base (len $content) (int $root.Values.dataFiles.maxFileBytes)) }}
{{- end }}
{{- $_ := set $out $base $content }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Egress peers from a {podSelector, namespaceSelector, cidrs} block. */}}
{{- define "shcr.egressPeers" -}}
{{- if or .podSelector .namespaceSelector }}
- {{- with .namespaceSelector }}
  namespaceSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .podSelector }}
  podSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- range .cidrs }}
- ipBlock:
    cidr: {{ . }}
{{- end }}
{{- end }}
