{{/* Names and labels (Helm's conventions). */}}
{{- define "eplb-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "eplb-operator.fullname" -}}
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

{{- define "eplb-operator.leaseName" -}}
{{- default (printf "%s-leader" (include "eplb-operator.fullname" .) | trunc 63 | trimSuffix "-") .Values.operator.leaderElection.leaseName -}}
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

{{- /*
The operator's rights in a namespace it watches (a Role there, or the ClusterRole when it
watches every namespace).  Least privilege: exactly the verbs and resources the operator
uses (kopf's watching and Events included); tests/charts checks this list against the
requests a real operator run makes, so it cannot drift from the code.
*/ -}}
{{- define "eplb-operator.rules" -}}
- apiGroups: [eplb.io]
  resources: [expertplacements]
  verbs: [get, list, watch, patch]
- apiGroups: [eplb.io]
  resources: [expertplacements/status]
  verbs: [patch]
- apiGroups: [apps]
  resources: [controllerrevisions]
  verbs: [list, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
# Not a request the operator makes: what the sidecars' SubjectAccessReview asks of the
# caller of their control API (eplb_sidecar.auth).  No subresource of that name is served;
# whoever holds this right may move the experts of this namespace's serving pods.
- apiGroups: [eplb.io]
  resources: [expertplacements/rollout]
  verbs: [update]
# Offline mappings (get); Restart rollouts: the engines' start-up file of each revision.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, delete]
# Restart rollouts: the serving workloads, whose pod template gets each revision.
- apiGroups: [apps]
  resources: [statefulsets, deployments]
  verbs: [get, patch]
- apiGroups: [leaderworkerset.x-k8s.io]
  resources: [leaderworkersets]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
