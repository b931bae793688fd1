{{/* Names and labels (Helm's conventions). */}}
{{- define "eplb-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "eplb-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "eplb-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eplb-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "eplb-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "eplb-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: eplb
{{- end -}}

{{- define "eplb-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "eplb-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "eplb-operator.image" -}}
{{- $image := index .root.Values.image .which -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{- define "eplb-operator.restrictedSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Sidecar injection, for serving charts (vLLM / SGLang with expert parallelism, as a plain
Deployment, a StatefulSet or a LeaderWorkerSet).  Add this chart as a dependency, then in
the pod template:

  metadata:
    labels:
      {{- include "eplb-operator.sidecar.podLabels" (dict "root" . "group" "replica-0" "rank" "0") | nindent 6 }}
  spec:
    containers:
      - name: vllm
        volumeMounts:
          {{- include "eplb-operator.sidecar.engineVolumeMounts" . | nindent 10 }}
      {{- include "eplb-operator.sidecar.container" . | nindent 6 }}
    volumes:
      {{- include "eplb-operator.sidecar.volumes" . | nindent 6 }}

The engine writes its expert table under sidecar.tableDir (docs/engine-contract.md).
*/}}
{{- define "eplb-operator.sidecar.podLabels" -}}
eplb.io/sidecar: "true"
eplb.io/group: {{ .group | quote }}
eplb.io/rank: {{ .rank | quote }}
{{- end -}}

{{- define "eplb-operator.sidecar.engineVolumeMounts" -}}
- name: eplb-table
  mountPath: {{ .Values.sidecar.tableDir }}
{{- end -}}

{{- define "eplb-operator.sidecar.container" -}}
- name: eplb-sidecar
  image: {{ include "eplb-operator.image" (dict "root" . "which" "sidecar") }}
  imagePullPolicy: {{ .Values.image.sidecar.pullPolicy }}
  args:
    - serve
    - --table-dir={{ .Values.sidecar.tableDir }}
    - --token-file=/var/run/eplb/token/token
    - --control-port={{ .Values.sidecar.controlPort }}
    - --metrics-port={{ .Values.sidecar.metricsPort }}
    - --transfer-port={{ .Values.sidecar.transferPort }}
    {{- with .Values.sidecar.checkpointPath }}
    - --checkpoint={{ . }}
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
  ports:
    - {name: eplb-control, containerPort: {{ .Values.sidecar.controlPort }}, protocol: TCP}
    - {name: eplb-metrics, containerPort: {{ .Values.sidecar.metricsPort }}, protocol: TCP}
    - {name: eplb-transfer, containerPort: {{ .Values.sidecar.transferPort }}, protocol: TCP}
  readinessProbe:
    httpGet: {path: /healthz, port: eplb-metrics}
    periodSeconds: 10
  livenessProbe:
    httpGet: {path: /healthz, port: eplb-metrics}
    periodSeconds: 20
    failureThreshold: 6
  resources:
    {{- toYaml .Values.sidecar.resources | nindent 4 }}
  securityContext:
    {{- include "eplb-operator.restrictedSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: eplb-table
      mountPath: {{ .Values.sidecar.tableDir }}
    - name: eplb-token
      mountPath: /var/run/eplb/token
      readOnly: true
    - name: eplb-tmp
      mountPath: /tmp
{{- end -}}

{{- define "eplb-operator.sidecar.volumes" -}}
- name: eplb-table
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.sidecar.tableSizeLimit }}
- name: eplb-token
  secret:
    secretName: {{ .Values.sidecar.token.secretName }}
- name: eplb-tmp
  emptyDir: {}
{{- end -}}
