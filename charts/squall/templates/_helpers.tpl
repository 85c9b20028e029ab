{{/* The chart name, or nameOverride. */}}
{{- define "squall.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Object name prefix: "<release>-<chart>" (just the release when it already contains the chart name),
truncated to 63 characters because some Kubernetes name fields are DNS labels.
*/}}
{{- define "squall.fullname" -}}
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

{{/* The name of one component's objects: "<fullname>-<component>", within 63 characters. */}}
{{- define "squall.componentName" -}}
{{- printf "%s-%s" (include "squall.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "squall.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Kubernetes recommended labels of one component; call with (dict "root" $ "component" "gateway"). */}}
{{- define "squall.labels" -}}
helm.sh/chart: {{ include "squall.chart" .root }}
{{ include "squall.selectorLabels" . }}
app.kubernetes.io/part-of: squall
app.kubernetes.io/version: {{ .root.Values.image.tag | default .root.Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: name, instance, component (never the version: selectors are immutable). */}}
{{- define "squall.selectorLabels" -}}
app.kubernetes.io/name: {{ include "squall.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The Squall image, by tag and, when given, digest. */}}
{{- define "squall.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else -}}
{{ printf "%s:%s" .Values.image.repository $tag }}
{{- end -}}
{{- end }}

{{- define "squall.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create -}}
{{ include "squall.componentName" . }}
{{- else -}}
default
{{- end -}}
{{- end }}

{{- define "squall.configName" -}}
{{ include "squall.componentName" (dict "root" . "component" "config") }}
{{- end }}

{{/* The NATS URL Squall connects to: the in-cluster NATS Service, or nats.url. */}}
{{- define "squall.natsUrl" -}}
{{- if .Values.nats.inCluster.enabled -}}
nats://{{ include "squall.componentName" (dict "root" . "component" "nats") }}:4222
{{- else -}}
{{ .Values.nats.url }}
{{- end -}}
{{- end }}

{{- define "squall.processorTerminationGrace" -}}
{{- add (int .Values.processor.shutdownGraceSeconds) (int .Values.processor.drainMarginSeconds) }}
{{- end }}

{{- define "squall.gatewayTerminationGrace" -}}
{{- add (int .Values.gateway.shutdownDelaySeconds) (int .Values.gateway.drainMarginSeconds) }}
{{- end }}

{{/*
The secret-backed environment and the mounts every Squall container shares (the migration init
container too). Secrets are only referenced: you create them, the chart never holds their values.
Call with (dict "root" $ "tokens" true) to add the API tokens file (the gateway only).
*/}}
{{- define "squall.secretEnv" -}}
{{- $v := .root.Values -}}
- name: SQUALL_INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if $v.database.urlKey }}
- name: SQUALL_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.database.existingSecret }}
      key: {{ $v.database.urlKey }}
{{- end }}
{{- if $v.database.passwordKey }}
- name: SQUALL_DATABASE_PASSWORD_FILE
  value: /var/run/secrets/squall/database/{{ $v.database.passwordKey }}
{{- end }}
{{- if $v.nats.credentialsSecret }}
- name: SQUALL_NATS__CREDENTIALS_FILE
  value: /var/run/secrets/squall/nats/{{ $v.nats.credentialsKey }}
{{- end }}
{{- if and .tokens $v.auth.existingSecret }}
- name: SQUALL_AUTH__TOKENS_FILE
  value: /var/run/secrets/squall/auth/{{ $v.auth.tokensKey }}
{{- end }}
{{- end }}

{{- define "squall.secretMounts" -}}
{{- $v := .root.Values -}}
- name: tmp
  mountPath: /tmp
{{- if $v.database.passwordKey }}
- name: database
  mountPath: /var/run/secrets/squall/database
  readOnly: true
{{- end }}
{{- if $v.nats.credentialsSecret }}
- name: nats
  mountPath: /var/run/secrets/squall/nats
  readOnly: true
{{- end }}
{{- if and .tokens $v.auth.existingSecret }}
- name: auth
  mountPath: /var/run/secrets/squall/auth
  readOnly: true
{{- end }}
{{- end }}

{{- define "squall.volumes" -}}
{{- $v := .root.Values -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if $v.database.passwordKey }}
- name: database
  secret:
    secretName: {{ $v.database.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $v.database.passwordKey }}
        path: {{ $v.database.passwordKey }}
{{- end }}
{{- if $v.nats.credentialsSecret }}
- name: nats
  secret:
    secretName: {{ $v.nats.credentialsSecret }}
    defaultMode: 0440
    items:
      - key: {{ $v.nats.credentialsKey }}
        path: {{ $v.nats.credentialsKey }}
{{- end }}
{{- if and .tokens $v.auth.existingSecret }}
- name: auth
  secret:
    secretName: {{ $v.auth.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $v.auth.tokensKey }}
        path: {{ $v.auth.tokensKey }}
{{- end }}
{{- end }}

{{/* The `squall migrate` init container. */}}
{{- define "squall.migrateInitContainer" -}}
{{- if .root.Values.migrations.enabled -}}
initContainers:
  - name: migrate
    image: {{ include "squall.image" .root }}
    imagePullPolicy: {{ .root.Values.image.pullPolicy }}
    args: [migrate]
    envFrom:
      - configMapRef:
          name: {{ include "squall.configName" .root }}
    env:
      {{- include "squall.secretEnv" (dict "root" .root "tokens" false) | nindent 6 }}
    volumeMounts:
      {{- include "squall.secretMounts" (dict "root" .root "tokens" false) | nindent 6 }}
    securityContext:
      {{- toYaml .root.Values.securityContext | nindent 6 }}
    resources:
      {{- toYaml .root.Values.migrations.resources | nindent 6 }}
{{- end }}
{{- end }}

{{/* startup, readiness and liveness probes on a named port. */}}
{{- define "squall.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}

{{- define "squall.topologySpread" -}}
{{- if .root.Values.topologySpread.enabled -}}
topologySpreadConstraints:
  - maxSkew: {{ .root.Values.topologySpread.maxSkew }}
    topologyKey: {{ .root.Values.topologySpread.topologyKey }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "squall.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end }}

{{/* Egress every Squall pod needs: DNS, NATS, PostgreSQL, plus networkPolicy.extraEgress. */}}
{{- define "squall.egress" -}}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
- ports:
    - {port: {{ .Values.networkPolicy.natsPort }}, protocol: TCP}
- ports:
    - {port: {{ .Values.networkPolicy.postgresqlPort }}, protocol: TCP}
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}
