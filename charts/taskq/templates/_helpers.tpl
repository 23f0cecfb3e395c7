{{/*
Names, labels, images and the shared environment of the taskq chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "taskq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object name: `<release>-<chart>` (just `<release>` when the release
name already contains the chart name), or fullnameOverride. Truncated so that the longest
suffix (`-controller`) still fits in 63 characters.
*/}}
{{- define "taskq.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* `<fullname>-<component>`: call with (dict "ctx" $ "component" "api"). */}}
{{- define "taskq.componentName" -}}
{{- printf "%s-%s" (include "taskq.fullname" .ctx) .component -}}
{{- end -}}

{{- define "taskq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select a component's pods; never change them (selectors are immutable). */}}
{{- define "taskq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taskq.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every object's labels: call with (dict "ctx" $ "component" "api"). */}}
{{- define "taskq.labels" -}}
helm.sh/chart: {{ include "taskq.chart" .ctx }}
{{ include "taskq.selectorLabels" . }}
app.kubernetes.io/part-of: taskq
{{- if .ctx.Chart.AppVersion }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels of the bundled stores (redis, mongodb): call with (dict "ctx" $ "component" "redis"
"image" .Values.redis.image). No taskq chart or app version: a taskq upgrade must not
change the stores' pod templates (and so restart them). The version label is the store's.
*/}}
{{- define "taskq.storeLabels" -}}
{{ include "taskq.selectorLabels" . }}
app.kubernetes.io/part-of: taskq
app.kubernetes.io/version: {{ .image.tag | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
An image reference from {registry, repository, tag, digest}: call with
(dict "image" .Values.api.image "ctx" $). global.imageRegistry replaces the registry; an
empty tag means the chart's appVersion; a digest pins the image.
*/}}
{{- define "taskq.image" -}}
{{- $registry := .image.registry -}}
{{- with .ctx.Values.global.imageRegistry }}{{ $registry = . }}{{ end -}}
{{- $repo := .image.repository -}}
{{- if $registry }}{{ $repo = printf "%s/%s" $registry .image.repository }}{{ end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.image.tag | default .ctx.Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{- define "taskq.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* ServiceAccount names. */}}
{{- define "taskq.api.serviceAccountName" -}}
{{- if .Values.api.serviceAccount.create -}}
{{- default (include "taskq.componentName" (dict "ctx" . "component" "api")) .Values.api.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.api.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "taskq.worker.serviceAccountName" -}}
{{- if .Values.worker.serviceAccount.create -}}
{{- default (include "taskq.componentName" (dict "ctx" . "component" "worker")) .Values.worker.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.worker.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "taskq.controller.serviceAccountName" -}}
{{- default (include "taskq.componentName" (dict "ctx" . "component" "controller")) .Values.controller.serviceAccount.name -}}
{{- end -}}

{{/*
API tokens: the Secret whose key `tokens` holds the `role:token` lines (api.auth.existingSecret,
or the one the chart generates), and where the api and the `helm test` pod mount it.
*/}}
{{- define "taskq.api.tokensSecretName" -}}
{{- default (printf "%s-api-tokens" (include "taskq.fullname" .)) .Values.api.auth.existingSecret -}}
{{- end -}}

{{- define "taskq.api.tokensDir" -}}
/etc/taskq/auth
{{- end -}}

{{/* The read-only Secret volume of the tokens file: call with the root context. */}}
{{- define "taskq.api.tokensVolume" -}}
- name: api-tokens
  secret:
    secretName: {{ include "taskq.api.tokensSecretName" . }}
    {{- if .Values.podSecurityContext.fsGroup }}
    # Only the `role:token` file, readable through fsGroup and by nobody else.
    defaultMode: 0440
    {{- else }}
    # Only the `role:token` file; without an fsGroup the non-root user reads it as "other".
    defaultMode: 0444
    {{- end }}
    items:
      - key: tokens
        path: tokens
{{- end -}}

{{- define "taskq.api.tokensVolumeMount" -}}
- name: api-tokens
  mountPath: {{ include "taskq.api.tokensDir" . }}
  readOnly: true
{{- end -}}

{{/* Redis: the Secret of the bundled Redis's passwords (generated or existing). */}}
{{- define "taskq.redis.authSecretName" -}}
{{- default (include "taskq.componentName" (dict "ctx" . "component" "redis")) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/* Redis: the Secret and key of an external Redis's URL. */}}
{{- define "taskq.redis.secretName" -}}
{{- if .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecret -}}
{{- else -}}
{{- include "taskq.componentName" (dict "ctx" . "component" "redis") -}}
{{- end -}}
{{- end -}}

{{- define "taskq.redis.secretKey" -}}
{{- if .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecretKey -}}
{{- else -}}
redis-url
{{- end -}}
{{- end -}}

{{/*
Memory in MiB of a Kubernetes quantity in Mi, Gi, M or G (0 when not one of those).
*/}}
{{- define "taskq.quantityMi" -}}
{{- $q := toString . -}}
{{- $mi := 0.0 -}}
{{- if hasSuffix "Gi" $q -}}{{- $mi = mulf (float64 (trimSuffix "Gi" $q)) 1024 -}}
{{- else if hasSuffix "Mi" $q -}}{{- $mi = float64 (trimSuffix "Mi" $q) -}}
{{- else if hasSuffix "G" $q -}}{{- $mi = divf (mulf (float64 (trimSuffix "G" $q)) 1000000000) 1048576 -}}
{{- else if hasSuffix "M" $q -}}{{- $mi = divf (mulf (float64 (trimSuffix "M" $q)) 1000000) 1048576 -}}
{{- end -}}
{{- $mi -}}
{{- end -}}

{{/*
Redis's maxmemory: redis.maxmemory, else 70 % of the container's memory limit in `mb`
(Redis's mb is MiB). Leaves room for the AOF rewrite, client buffers and the allocator.
*/}}
{{- define "taskq.redis.maxmemory" -}}
{{- if .Values.redis.maxmemory -}}
{{- .Values.redis.maxmemory -}}
{{- else -}}
{{- $limit := float64 (include "taskq.quantityMi" (dig "limits" "memory" "" .Values.redis.resources)) -}}
{{- printf "%dmb" (int64 (floor (mulf $limit 0.7))) -}}
{{- end -}}
{{- end -}}

{{/* StorageClass of a bundled store's claim: its own, else global.storageClass. */}}
{{- define "taskq.storageClass" -}}
{{- default (dig "storageClass" "" .ctx.Values.global) .persistence.storageClass -}}
{{- end -}}

{{/* MongoDB: where its connection string is kept. */}}
{{- define "taskq.mongodb.secretName" -}}
{{- if .Values.mongodb.enabled -}}
{{- default (include "taskq.componentName" (dict "ctx" . "component" "mongodb")) .Values.mongodb.auth.existingSecret -}}
{{- else if .Values.mongodb.external.existingSecret -}}
{{- .Values.mongodb.external.existingSecret -}}
{{- else -}}
{{- include "taskq.componentName" (dict "ctx" . "component" "mongodb") -}}
{{- end -}}
{{- end -}}

{{- define "taskq.mongodb.secretKey" -}}
{{- if .Values.mongodb.enabled -}}
{{- .Values.mongodb.auth.uriKey -}}
{{- else if .Values.mongodb.external.existingSecret -}}
{{- .Values.mongodb.external.existingSecretKey -}}
{{- else -}}
mongodb-uri
{{- end -}}
{{- end -}}

{{/* The OTLP endpoint: otel.endpoint, else the bundled Jaeger, else none. */}}
{{- define "taskq.otel.endpoint" -}}
{{- if .Values.otel.endpoint -}}
{{- .Values.otel.endpoint -}}
{{- else if .Values.jaeger.enabled -}}
{{- $port := ternary "4317" "4318" (eq .Values.otel.protocol "grpc") -}}
{{- printf "http://%s:%s" (include "taskq.componentName" (dict "ctx" . "component" "jaeger")) $port -}}
{{- end -}}
{{- end -}}

{{/*
Environment every taskq binary reads: backing services, logging, tracing. Call with
(dict "ctx" $ "component" "api" "port" 8080).
*/}}
{{- define "taskq.commonEnv" -}}
{{- $ctx := .ctx -}}
- name: TASKQ_LISTEN
  value: "0.0.0.0:{{ .port }}"
{{- if $ctx.Values.redis.enabled }}
# The application user's password, expanded into TASKQ_REDIS_URL below (never a literal).
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "taskq.redis.authSecretName" $ctx }}
      key: {{ $ctx.Values.redis.auth.appPasswordKey }}
- name: TASKQ_REDIS_URL
  value: {{ printf "redis://%s:$(REDIS_PASSWORD)@%s:6379" ($ctx.Values.redis.auth.username | urlquery) (include "taskq.componentName" (dict "ctx" $ctx "component" "redis")) | quote }}
{{- else }}
- name: TASKQ_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "taskq.redis.secretName" $ctx }}
      key: {{ include "taskq.redis.secretKey" $ctx }}
{{- end }}
{{- if and (not $ctx.Values.redis.enabled) $ctx.Values.redis.external.cluster }}
- name: TASKQ_REDIS_CLUSTER
  value: "true"
{{- end }}
{{- if ne .component "controller" }}
- name: TASKQ_MONGODB_URI
  valueFrom:
    secretKeyRef:
      name: {{ include "taskq.mongodb.secretName" $ctx }}
      key: {{ include "taskq.mongodb.secretKey" $ctx }}
- name: TASKQ_MONGODB_DATABASE
  value: {{ $ctx.Values.mongodb.database | quote }}
{{- end }}
- name: TASKQ_LOG_FORMAT
  value: {{ $ctx.Values.config.logFormat | quote }}
- name: RUST_LOG
  value: {{ $ctx.Values.config.logLevel | quote }}
{{- $endpoint := include "taskq.otel.endpoint" $ctx }}
{{- if and $ctx.Values.otel.enabled $endpoint }}
{{ include "taskq.otelResourceEnv" $ctx }}
- name: OTEL_SERVICE_NAME
  value: "taskq-{{ .component }}"
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $ctx.Values.otel.protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $ctx.Values.otel.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $ctx.Values.otel.samplerArg | quote }}
{{- end }}
{{- end -}}

{{/*
Liveness (/livez), readiness (/readyz) and startup (/livez) probes on the named port
"http": call with the component's values (.livenessProbe, .readinessProbe, .startupProbe).
*/}}
{{- define "taskq.probes" -}}
livenessProbe:
  httpGet:
    path: /livez
    port: http
  periodSeconds: {{ .livenessProbe.periodSeconds }}
  timeoutSeconds: {{ .livenessProbe.timeoutSeconds }}
  failureThreshold: {{ .livenessProbe.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: {{ .readinessProbe.periodSeconds }}
  timeoutSeconds: {{ .readinessProbe.timeoutSeconds }}
  failureThreshold: {{ .readinessProbe.failureThreshold }}
  successThreshold: {{ .readinessProbe.successThreshold }}
startupProbe:
  httpGet:
    path: /livez
    port: http
  periodSeconds: {{ .startupProbe.periodSeconds }}
  timeoutSeconds: {{ .startupProbe.timeoutSeconds }}
  failureThreshold: {{ .startupProbe.failureThreshold }}
{{- end -}}

{{/*
Extension points of a taskq container, after its own env: call with the component's
values. extraEnvFrom, then extraVolumeMounts (call "taskq.extraVolumeMounts" inside the
container's volumeMounts).
*/}}
{{- define "taskq.extraEnvFrom" -}}
{{- with .extraEnvFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
initContainers and sidecars of a taskq pod (sidecars are appended to `containers`, call
"taskq.sidecars" right after the main container), rendered through tpl so that they may
refer to the release (e.g. `{{ .Release.Name }}`): call with (dict "ctx" $ "values" .Values.api).
*/}}
{{- define "taskq.initContainers" -}}
{{- with .values.initContainers }}
initContainers:
  {{- tpl (toYaml .) $.ctx | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "taskq.sidecars" -}}
{{- with .values.sidecars }}
{{- tpl (toYaml .) $.ctx }}
{{- end }}
{{- end -}}

{{/*
Pod identity for OpenTelemetry from the downward API: OTEL_RESOURCE_ATTRIBUTES with
k8s.pod.name, k8s.namespace.name and k8s.node.name (the SDK's environment detector reads it).
*/}}
{{- define "taskq.otelResourceEnv" -}}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NAMESPACE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.pod.name=$(K8S_POD_NAME),k8s.namespace.name=$(K8S_NAMESPACE_NAME),k8s.node.name=$(K8S_NODE_NAME)"
{{- end -}}

{{/* Scheduling fields of a pod spec from a component's values. */}}
{{- define "taskq.scheduling" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .values.affinity }}
affinity:
  {{- toYaml .values.affinity | nindent 2 }}
{{- else if .values.podAntiAffinityPreset }}
# podAntiAffinityPreset: spread the replicas over nodes ({{ .values.podAntiAffinityPreset }}).
affinity:
  podAntiAffinity:
    {{- if eq .values.podAntiAffinityPreset "hard" }}
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "taskq.selectorLabels" (dict "ctx" $.ctx "component" $.component) | nindent 12 }}
    {{- else }}
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "taskq.selectorLabels" (dict "ctx" $.ctx "component" $.component) | nindent 14 }}
    {{- end }}
{{- end }}
{{- if .values.topologySpreadConstraints }}
topologySpreadConstraints:
{{- range .values.topologySpreadConstraints }}
  - {{- toYaml (omit . "labelSelector") | nindent 4 }}
    labelSelector:
      {{- if .labelSelector }}
      {{- toYaml .labelSelector | nindent 6 }}
      {{- else }}
      matchLabels:
        {{- include "taskq.selectorLabels" (dict "ctx" $.ctx "component" $.component) | nindent 8 }}
      {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
"true" when a component's PodDisruptionBudget cannot block a node drain: call with
(dict "pdb" .Values.api.pdb "replicas" <the fewest replicas the component runs>).
maxUnavailable of at least 1 (or a non-zero percentage), or an integer minAvailable below
the replicas. A budget that could block a drain is not rendered.
*/}}
{{- define "taskq.pdbSafe" -}}
{{- if not (kindIs "invalid" .pdb.minAvailable) -}}
{{- if and (not (kindIs "string" .pdb.minAvailable)) (lt (int64 .pdb.minAvailable) (int64 .replicas)) -}}true{{- end -}}
{{- else if not (kindIs "invalid" .pdb.maxUnavailable) -}}
{{- if kindIs "string" .pdb.maxUnavailable -}}
{{- if ne (trimSuffix "%" .pdb.maxUnavailable) "0" -}}true{{- end -}}
{{- else if ge (int64 .pdb.maxUnavailable) 1 -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* The fewest replicas the workers run: the autoscaler's minimum, or replicaCount. */}}
{{- define "taskq.worker.minReplicas" -}}
{{- if include "taskq.worker.autoscaled" . -}}{{ .Values.controller.scaler.minReplicas }}
{{- else if .Values.worker.hpa.enabled -}}{{ .Values.worker.hpa.minReplicas }}
{{- else -}}{{ .Values.worker.replicaCount }}{{- end -}}
{{- end -}}

{{/* A PodDisruptionBudget spec's budget from {minAvailable, maxUnavailable}. */}}
{{- define "taskq.pdbBudget" -}}
{{- if not (kindIs "invalid" .minAvailable) }}
minAvailable: {{ .minAvailable }}
{{- else }}
maxUnavailable: {{ .maxUnavailable }}
{{- end }}
{{- end -}}

{{/* Checks values that the schema cannot; fails the render with what to fix. */}}
{{- define "taskq.validateValues" -}}
{{- $errors := list -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.external.url) (not .Values.redis.external.existingSecret) -}}
{{- $errors = append $errors "redis.enabled is false: set redis.external.url or redis.external.existingSecret" -}}
{{- end -}}
{{- if and (not .Values.mongodb.enabled) (not .Values.mongodb.external.uri) (not .Values.mongodb.external.existingSecret) -}}
{{- $errors = append $errors "mongodb.enabled is false: set mongodb.external.uri or mongodb.external.existingSecret" -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.redis.external.cluster -}}
{{- $errors = append $errors "redis.external.cluster needs an external Redis Cluster: the bundled Redis (redis.enabled) is a single node" -}}
{{- end -}}
{{- if .Values.redis.enabled -}}
{{- $limitMi := float64 (include "taskq.quantityMi" (dig "limits" "memory" "" .Values.redis.resources)) -}}
{{- if le $limitMi 0.0 -}}
{{- $errors = append $errors "redis.resources.limits.memory must be set in Mi, Gi, M or G: maxmemory is derived from it" -}}
{{- else if .Values.redis.maxmemory -}}
{{- $mm := lower (toString .Values.redis.maxmemory) -}}
{{- $mmMi := 0.0 -}}
{{- if hasSuffix "gb" $mm }}{{ $mmMi = mulf (float64 (trimSuffix "gb" $mm)) 1024 }}
{{- else if hasSuffix "mb" $mm }}{{ $mmMi = float64 (trimSuffix "mb" $mm) }}
{{- else -}}
{{- $errors = append $errors (printf "redis.maxmemory %q: give it in mb or gb" .Values.redis.maxmemory) -}}
{{- end -}}
{{- if gt $mmMi (mulf $limitMi 0.8) -}}
{{- $errors = append $errors (printf "redis.maxmemory (%s) must stay at or below 80%% of redis.resources.limits.memory (%v): the append-only-file rewrite and client buffers need the rest" .Values.redis.maxmemory .Values.redis.resources.limits.memory) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $graceMs := mul .Values.worker.terminationGracePeriodSeconds 1000 -}}
{{- if ge (int64 .Values.worker.shutdownGraceMs) (int64 $graceMs) -}}
{{- $errors = append $errors (printf "worker.shutdownGraceMs (%v) must be below worker.terminationGracePeriodSeconds (%v s), or running tasks are killed instead of released" .Values.worker.shutdownGraceMs .Values.worker.terminationGracePeriodSeconds) -}}
{{- end -}}
{{- if lt (int64 .Values.worker.leaseMs) 1000 -}}
{{- $errors = append $errors "worker.leaseMs must be at least 1000" -}}
{{- end -}}
{{- if gt (int64 .Values.api.config.maxPayloadBytes) (int64 .Values.api.config.maxBodyBytes) -}}
{{- $errors = append $errors "api.config.maxPayloadBytes must not exceed api.config.maxBodyBytes" -}}
{{- end -}}
{{- $retention := int64 .Values.api.config.retentionSeconds -}}
{{- if and (gt $retention 0) (lt $retention (int64 .Values.api.config.idempotencyTtlSeconds)) -}}
{{- $errors = append $errors "api.config.retentionSeconds must be 0 (keep forever) or at least api.config.idempotencyTtlSeconds" -}}
{{- end -}}
{{- if and .Values.api.periodic (lt (int64 .Values.api.config.idempotencyTtlSeconds) 300) -}}
{{- $errors = append $errors "api.config.idempotencyTtlSeconds must be at least 300 with api.periodic schedules" -}}
{{- end -}}
{{- range $c := list "api" "worker" -}}
{{- $pdb := get (get $.Values $c) "pdb" -}}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) -}}
{{- $errors = append $errors (printf "%s.pdb: set minAvailable or maxUnavailable" $c) -}}
{{- end -}}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) -}}
{{- $errors = append $errors (printf "%s.pdb: set only one of minAvailable and maxUnavailable" $c) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.worker.hpa.enabled (include "taskq.worker.autoscaled" .) -}}
{{- $errors = append $errors "worker.hpa.enabled and controller.scaler.enabled (with controller.enabled) would put two autoscalers on the worker Deployment: enable one" -}}
{{- end -}}
{{- if and .Values.worker.hpa.enabled (gt (int64 .Values.worker.hpa.minReplicas) (int64 .Values.worker.hpa.maxReplicas)) -}}
{{- $errors = append $errors "worker.hpa.minReplicas must not exceed worker.hpa.maxReplicas" -}}
{{- end -}}
{{- if .Values.controller.enabled -}}
{{- with .Values.controller.scaler -}}
{{- if and .enabled (gt (int64 .minReplicas) (int64 .maxReplicas)) -}}
{{- $errors = append $errors (printf "controller.scaler.minReplicas (%v) must not exceed maxReplicas (%v)" .minReplicas .maxReplicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.api.httpRoute.enabled (not .Values.api.httpRoute.parentRefs) -}}
{{- $errors = append $errors "api.httpRoute.enabled: give the Gateway in api.httpRoute.parentRefs" -}}
{{- end -}}
{{- if and .Values.api.ingress.enabled (not .Values.api.ingress.hosts) -}}
{{- $errors = append $errors "api.ingress.enabled: give at least one entry in api.ingress.hosts" -}}
{{- end -}}
{{- if $errors -}}
{{- fail (printf "\n\nVALUES VALIDATION:\n  - %s\n" (join "\n  - " $errors)) -}}
{{- end -}}
{{- end -}}

{{/*
WiredTiger cache for the bundled MongoDB: 40 % of the container's memory limit (at least
0.25 GB, MongoDB's minimum), 0.25 GB when no limit in Mi/Gi is set.
*/}}
{{- define "taskq.mongodb.cacheSizeGB" -}}
{{- $mi := float64 (include "taskq.quantityMi" (dig "limits" "memory" "" .Values.mongodb.resources)) -}}
{{- $gb := divf (mulf $mi 0.4) 1024 -}}
{{- if lt $gb 0.25 }}{{ $gb = 0.25 }}{{ end -}}
{{- printf "%.2f" $gb -}}
{{- end -}}

{{/* Does the worker Deployment have its replicas owned by the controller? (See also worker.hpa.) */}}
{{- define "taskq.worker.autoscaled" -}}
{{- if and .Values.controller.enabled .Values.controller.scaler.enabled -}}true{{- end -}}
{{- end -}}
