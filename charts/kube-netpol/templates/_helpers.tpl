{{/*
Names and labels. With the release named "kube-netpol" every object is named
exactly as in install.yaml, and the DaemonSet selector is the same.
*/}}
{{- define "kube-netpol.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kube-netpol.fullname" -}}
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

{{- define "kube-netpol.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kube-netpol.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kube-netpol.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kube-netpol.labels" -}}
helm.sh/chart: {{ include "kube-netpol.chart" . }}
{{ include "kube-netpol.selectorLabels" . }}
app.kubernetes.io/version: {{ include "kube-netpol.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kube-netpol.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kube-netpol.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kube-netpol.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "kube-netpol.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "kube-netpol.imageTag" .) }}
{{- end }}

{{/*
The `kube-netpol run` flags, one per line, in the order install.yaml lists them.
Booleans are spelled out (Go style, --flag=true|false) so the pod spec says
what the agent does without knowing the defaults.
*/}}
{{- define "kube-netpol.args" -}}
- {{ printf "--metrics-bind-address=:%d" (int .Values.metricsPort) | quote }}
- {{ printf "--nfqueue-id=%d" (int .Values.nfqueueId) | quote }}
- {{ printf "--fail-open=%t" .Values.failOpen | quote }}
- {{ printf "--strict-mode=%t" .Values.strictMode | quote }}
- {{ printf "--queue-backend=%s" .Values.queueBackend | quote }}
{{- /* "with": values reused from a release older than these values (helm upgrade --reuse-values) lack them. */}}
{{- with .Values.verdictMemory }}
{{- if kindIs "bool" .enabled }}
- {{ printf "--verdict-memory=%t" .enabled | quote }}
{{- end }}
{{- if .timeoutSeconds }}
- {{ printf "--verdict-memory-timeout=%d" (int .timeoutSeconds) | quote }}
{{- end }}
{{- end }}
- {{ printf "--enable-admin-network-policy=%t" .Values.adminNetworkPolicy.enabled | quote }}
- {{ printf "--enable-baseline-admin-network-policy=%t" .Values.baselineAdminNetworkPolicy.enabled | quote }}
- {{ printf "--enable-cluster-network-policy=%t" .Values.clusterNetworkPolicy.enabled | quote }}
{{- if .Values.multiNetworkPolicy.enabled }}
{{- /* An explicit pipeline: the enabled built-in evaluators in their order (plugins.BUILTIN_ORDER), then the plugin. */}}
{{- $pipeline := list }}
{{- if .Values.clusterNetworkPolicy.enabled }}{{ $pipeline = append $pipeline "clusternetworkpolicy-admin" }}{{ end }}
{{- if .Values.adminNetworkPolicy.enabled }}{{ $pipeline = append $pipeline "adminnetworkpolicy" }}{{ end }}
{{- $pipeline = append $pipeline "networkpolicy" }}
{{- if .Values.baselineAdminNetworkPolicy.enabled }}{{ $pipeline = append $pipeline "baselineadminnetworkpolicy" }}{{ end }}
{{- if .Values.clusterNetworkPolicy.enabled }}{{ $pipeline = append $pipeline "clusternetworkpolicy-baseline" }}{{ end }}
{{- $pipeline = append $pipeline "multinetwork" }}
- {{ printf "--evaluators=%s" (join "," $pipeline) | quote }}
- {{ printf "--pod-netns-lookup=%s" .Values.multiNetworkPolicy.podNetnsLookup | quote }}
{{- if eq .Values.multiNetworkPolicy.podNetnsLookup "dir" }}
- {{ printf "--pod-netns-dir=%s" .Values.multiNetworkPolicy.podNetnsDir | quote }}
{{- else }}
{{- /* hostPID: the container's /proc is the node's. */}}
- "--host-proc=/proc"
{{- end }}
{{- end }}
- {{ printf "--log-format=%s" .Values.logFormat | quote }}
{{- range until (int .Values.verbosity) }}
- "-v"
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The policy controller (kube-netpol policy-controller): names, and pod labels
that the agent's DaemonSet and metrics Service do not select.
*/}}
{{- define "kube-netpol.policyController.fullname" -}}
{{- printf "%s-policy-controller" (include "kube-netpol.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kube-netpol.policyController.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-policy-controller" (include "kube-netpol.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kube-netpol.policyController.labels" -}}
helm.sh/chart: {{ include "kube-netpol.chart" . }}
{{ include "kube-netpol.policyController.selectorLabels" . }}
app.kubernetes.io/component: policy-controller
app.kubernetes.io/part-of: {{ include "kube-netpol.name" . }}
app.kubernetes.io/version: {{ include "kube-netpol.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The `kube-netpol policy-controller` flags. */}}
{{- define "kube-netpol.policyController.args" -}}
- {{ printf "--dry-run=%t" .Values.policyController.dryRun | quote }}
- {{ printf "--metrics-bind-address=:%d" (int .Values.policyController.port) | quote }}
- {{ printf "--writes-per-second=%v" .Values.policyController.writesPerSecond | quote }}
- {{ printf "--log-format=%s" .Values.logFormat | quote }}
{{- range until (int .Values.verbosity) }}
- "-v"
{{- end }}
{{- range .Values.policyController.namespaces }}
- {{ printf "--namespace=%s" . | quote }}
{{- end }}
{{- range .Values.policyController.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
