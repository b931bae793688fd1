{{/*
One pod of the LeaderWorkerSet (leader or worker): SGLang-style arguments, the eplb-sidecar
chart's sidecar. Context: dict "root" $ "leader" bool.
*/}}
{{- define "wide-ep.sglangPod" -}}
{{- $eplb := index .root.Subcharts "eplb-sidecar" }}
{{- $ranks := mul (int .root.Values.nodes) (int .root.Values.gpusPerPod) }}
metadata:
  labels:
    app.kubernetes.io/name: {{ .root.Release.Name }}
    eplb.io/sidecar: "true"
spec:
  serviceAccountName: {{ include "eplb-sidecar.serviceAccountName" $eplb }}
  securityContext:
    fsGroup: 65532  # the sidecar's group: the engine's tables and step locks are 0660
    # Peer transfers' ports in transferPort+1 … transferPortEnd: a NetworkPolicy can allow
    # them. Pod-wide: SGLang's own ephemeral ports come from there too (values.yaml).
    {{- include "eplb-sidecar.podSysctls" $eplb | nindent 4 }}
  containers:
    - name: sglang
      image: {{ .root.Values.image }}
      # The LeaderWorkerSet controller sets LWS_LEADER_ADDRESS, LWS_GROUP_SIZE and
      # LWS_WORKER_INDEX in every container: worker i of a group is node rank i, and hosts
      # EP ranks i*8 … i*8+7.
      command:
        - python3
        - -m
        - sglang.launch_server
        - --model-path={{ .root.Values.model }}
        - --trust-remote-code
        - --tp-size={{ $ranks }}
        - --dp-size={{ $ranks }}
        - --enable-dp-attention
        - --moe-a2a-backend=deepep
        - --ep-num-redundant-experts={{ .root.Values.redundantExperts }}
        - --nnodes=$(LWS_GROUP_SIZE)
        - --node-rank=$(LWS_WORKER_INDEX)
        - --dist-init-addr=$(LWS_LEADER_ADDRESS):20000
        - --host=0.0.0.0
        - --port={{ .root.Values.port }}
      {{- with (include "eplb-sidecar.engineFlags" $eplb) }}
      args:
        {{- . | nindent 8 }}
      {{- end }}
      {{- if .leader }}
      ports:
        - {name: http, containerPort: {{ .root.Values.port }}}
      {{- end }}
      resources:
        limits:
          nvidia.com/gpu: {{ .root.Values.gpusPerPod }}
      volumeMounts:
        - {name: shm, mountPath: /dev/shm}  # before the table's mount inside it
        {{- include "eplb-sidecar.engineVolumeMounts" $eplb | nindent 8 }}
    {{- include "eplb-sidecar.container" $eplb | nindent 4 }}
  volumes:
    {{- include "eplb-sidecar.volumes" $eplb | nindent 4 }}
    - name: shm
      emptyDir: {medium: Memory, sizeLimit: 64Gi}
{{- end -}}
