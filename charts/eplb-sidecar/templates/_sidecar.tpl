{{/*
The EPLB sidecar for a serving pod. Depend on this chart, then in the pod template, with
the subchart's context `$eplb := index .Subcharts "eplb-sidecar"`:

  metadata:
    labels:
      {{- include "eplb-sidecar.podLabels" (dict "group" "replica-0") | nindent 6 }}
  spec:
    serviceAccountName: {{ include "eplb-sidecar.serviceAccountName" $eplb }}
    securityContext:
      fsGroup: 65532  # the sidecar's group: it shares the engine's table files
      {{- include "eplb-sidecar.podSysctls" $eplb | nindent 6 }}
    containers:
      - name: vllm
        volumeMounts:
          {{- include "eplb-sidecar.engineVolumeMounts" $eplb | nindent 10 }}
      {{- include "eplb-sidecar.container" $eplb | nindent 6 }}
    volumes:
      {{- include "eplb-sidecar.volumes" $eplb | nindent 6 }}

and once, in a template of its own: {{ include "eplb-sidecar.rbac" $eplb }} (the pods'
ServiceAccount and its right to ask the API server about the operator's token).
eplb-sidecar.podSysctls puts the transfers' ports in a range a NetworkPolicy can allow
(_ports.tpl).

Ranks are not labels: the ExpertPlacement takes them from the workload (a StatefulSet's
apps.kubernetes.io/pod-index, or a LeaderWorkerSet's worker index: spec.pods.rankFrom). The
engine writes its expert table under tableDir, one per local rank in tableDir/local-k when
ranksPerPod > 1 (docs/engine-contract.md).
*/}}
{{/*
The control API accepts the operator's projected ServiceAccount token (audience
auth.audience): the sidecar checks it with a TokenReview and a SubjectAccessReview (verb
update on expertplacements/rollout in group eplb.io, which only the operator's role grants).
Its own ServiceAccount may create those reviews, and nothing else: the built-in ClusterRole
system:auth-delegator, bound once per release and namespace. No Secret.
*/}}
{{- define "eplb-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-eplb-sidecar" .Release.Name | trunc 63 | trimSuffix "-") .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "eplb-sidecar.rbac" -}}
{{- $account := include "eplb-sidecar.serviceAccountName" . }}
{{- if .Values.serviceAccount.create }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $account }}
  namespace: {{ .Release.Namespace }}
  labels:
    app.kubernetes.io/name: eplb-sidecar
    app.kubernetes.io/instance: {{ .Release.Name }}
    app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
{{- if .Values.rbac.create }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  # Cluster-scoped: the namespace in the name keeps releases of two namespaces apart.
  name: {{ printf "%s-%s-eplb-sidecar-auth" .Release.Name .Release.Namespace | trunc 63 | trimSuffix "-" }}
  labels:
    app.kubernetes.io/name: eplb-sidecar
    app.kubernetes.io/instance: {{ .Release.Name }}
    app.kubernetes.io/managed-by: {{ .Release.Service }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:auth-delegator
subjects:
  - kind: ServiceAccount
    name: {{ $account }}
    namespace: {{ .Release.Namespace }}
{{- end }}
{{- end -}}

{{- define "eplb-sidecar.podLabels" -}}
eplb.io/sidecar: "true"
eplb.io/group: {{ .group | quote }}
{{- end -}}

{{- define "eplb-sidecar.engineVolumeMounts" -}}
{{- if eq .Values.source "table" }}
- name: eplb-table
  mountPath: {{ .Values.tableDir }}
{{- else }}
{{- include "eplb-sidecar.sourceMounts" . }}
{{- end }}
{{- end -}}

{{- define "eplb-sidecar.container" -}}
{{- include "eplb-sidecar.checkPorts" . }}
- name: eplb-sidecar
  image: {{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    {{- if eq .Values.source "table" }}
    - serve
    - --table-dir={{ .Values.tableDir }}
    - --auth=kubernetes
    - --audience={{ .Values.auth.audience }}
    - --control-port={{ .Values.controlPort }}
    - --metrics-port={{ .Values.metricsPort }}
    - --transfer-port={{ .Values.transferPort }}
    - --ranks-per-pod={{ .Values.ranksPerPod }}
    {{- with .Values.startupProbe }}
    {{- /* Kubernetes' defaults where the probe leaves them out: 10 s, 3 failures. */}}
    - --wait-seconds={{ mul (default 10 .periodSeconds | int) (default 3 .failureThreshold | int) }}
    {{- end }}
    {{- with .Values.checkpointPath }}
    - --checkpoint={{ . }}
    {{- end }}
    {{- else }}
    {{- include "eplb-sidecar.sourceArgs" . | nindent 4 }}
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE  # where the caller must be allowed to roll out placements
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- if eq .Values.source "table" }}
    - {name: eplb-control, containerPort: {{ .Values.controlPort }}, protocol: TCP}
    {{- end }}
    - {name: eplb-metrics, containerPort: {{ .Values.metricsPort }}, protocol: TCP}
    {{- if eq .Values.source "table" }}
    - {name: eplb-transfer, containerPort: {{ .Values.transferPort }}, protocol: TCP}
    {{- end }}
  {{- with .Values.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- if eq .Values.source "table" }}
    - name: eplb-table
      mountPath: {{ .Values.tableDir }}
    {{- else }}
    {{- include "eplb-sidecar.sourceMounts" . | nindent 4 }}
    {{- end }}
    - name: eplb-tmp
      mountPath: /tmp
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- define "eplb-sidecar.volumes" -}}
{{- if eq .Values.source "table" }}
- name: eplb-table
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.tableSizeLimit }}
{{- else }}
- name: eplb-stats
  emptyDir: {}
{{- if .Values.placement.name }}
- name: eplb-placement
  configMap:
    # The operator points this at each revision's ConfigMap (rollout.strategy Restart).
    name: {{ .Values.placement.name }}-placement-0
{{- end }}
{{- end }}
- name: eplb-tmp
  emptyDir: {}
{{- end -}}
