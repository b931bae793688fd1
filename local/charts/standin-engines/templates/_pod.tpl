{{/*
A stand-in engine pod: the engine started from the placement's start-up file, the sidecar
reading its load. Arguments (a dict): root (the chart's context), eplb (the eplb-sidecar
subchart's), group (its EP group, for a StatefulSet or Deployment), lws (a LeaderWorkerSet's
pod: group and rank from the labels its controller sets).
*/}}
{{- define "standin-engines.pod" -}}
{{- $root := .root }}
{{- $eplb := .eplb }}
{{- $group := .group }}
{{- $lws := .lws }}
{{- /* a pod a rank (StatefulSet, LeaderWorkerSet), or one pod holding them all */}}
{{- $podPerRank := ne $root.Values.kind "Deployment" -}}
metadata:
  labels:
    app: {{ $root.Values.app }}
    {{- if $lws }}
    eplb.io/sidecar: "true"
    {{- else }}
    {{- include "eplb-sidecar.podLabels" (dict "group" $group) | nindent 4 }}
    {{- end }}
spec:
  terminationGracePeriodSeconds: 5
  securityContext:
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    {{- include "eplb-sidecar.podSysctls" $eplb | nindent 4 }}
  containers:
    - name: engine
      image: {{ $root.Values.image }}
      command: [python, -m, eplb_local.standin, {{ $root.Values.engine }}]
      args:
        {{- if eq $root.Values.engine "sglang" }}
        - --ep-size={{ $root.Values.ranks }}
        - --nnodes={{ $podPerRank | ternary $root.Values.ranks 1 }}
        - --node-rank=$(RANK)
        - --ep-num-redundant-experts={{ $root.Values.redundant }}
        {{- else if eq $root.Values.engine "vllm" }}
        - example/standin-moe
        - --data-parallel-size={{ $root.Values.ranks }}
        - --data-parallel-size-local={{ $podPerRank | ternary 1 $root.Values.ranks }}
        - --data-parallel-start-rank=$(RANK)
        - --enable-expert-parallel
        {{- else }}
        - example/standin-moe
        - --ep_size={{ $root.Values.ranks }}
        - --extra_llm_api_options=/etc/standin/options.yaml
        {{- end }}
        {{- include "eplb-sidecar.engineFlags" $eplb | nindent 8 }}
        - --host=0.0.0.0
        - --port={{ $root.Values.port }}
        - --standin-hidden-layers={{ $root.Values.model.hiddenLayers }}
        - --standin-first-moe-layer={{ $root.Values.model.firstMoeLayer }}
        - --standin-experts={{ $root.Values.model.experts }}
        - --standin-top-k={{ $root.Values.model.topK }}
        - --standin-tokens-per-step={{ $root.Values.model.tokensPerStep }}
        - --standin-step-seconds={{ $root.Values.model.stepSeconds }}
        - --standin-skew={{ $root.Values.model.skew }}
        - --standin-seed={{ $root.Values.model.seed }}
      env:
        - name: RANK
          {{- if $lws }}
          valueFrom:  # the worker index (the leader's is 0)
            fieldRef: {fieldPath: "metadata.labels['leaderworkerset.sigs.k8s.io/worker-index']"}
          {{- else if eq $root.Values.kind "StatefulSet" }}
          valueFrom:
            fieldRef: {fieldPath: "metadata.labels['apps.kubernetes.io/pod-index']"}
          {{- else }}
          value: "0"
          {{- end }}
        {{- if $podPerRank }}
        - {name: OMPI_COMM_WORLD_RANK, value: $(RANK)}  # trtllm's rank, as mpirun sets it
        {{- end }}
        - {name: OMP_NUM_THREADS, value: "1"}
        - {name: NUMBA_CACHE_DIR, value: /tmp/numba}  # the vLLM stand-in plans with numba
        {{- include "eplb-sidecar.engineEnv" $eplb | nindent 8 }}
      ports:
        - {name: engine, containerPort: {{ $root.Values.port }}}
      readinessProbe:
        httpGet: {path: /health, port: engine}
        periodSeconds: 1
      volumeMounts:
        - {name: engine-tmp, mountPath: /tmp}
        {{- include "eplb-sidecar.engineVolumeMounts" $eplb | nindent 8 }}
        {{- if eq $root.Values.engine "trtllm" }}
        - {name: llm-api-options, mountPath: /etc/standin, readOnly: true}
        {{- end }}
    {{- include "eplb-sidecar.container" $eplb | nindent 4 }}
  volumes:
    - {name: engine-tmp, emptyDir: {}}
    {{- include "eplb-sidecar.volumes" $eplb | nindent 4 }}
    {{- if eq $root.Values.engine "trtllm" }}
    - name: llm-api-options
      configMap: {name: {{ $root.Release.Name }}-llm-api-options}
    {{- end }}
{{- end -}}
