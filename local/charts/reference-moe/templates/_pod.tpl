{{/*
The serving pod's spec: one engine process per local rank and the injected sidecar.
Arguments (a dict): root (the chart's context), eplb (the eplb-sidecar subchart's),
groupArg (the engine's --group: a literal group, or $(GROUP_INDEX) from the pod's label),
indexLabel (the label holding the pod's index in its group).
*/}}
{{- define "reference-moe.podSpec" -}}
{{- $root := .root }}
{{- $eplb := .eplb }}
{{- $groupArg := .groupArg }}
{{- $indexLabel := .indexLabel }}
{{- $perPod := int $eplb.Values.ranksPerPod -}}
serviceAccountName: {{ include "eplb-sidecar.serviceAccountName" $eplb }}
terminationGracePeriodSeconds: 10
securityContext:
  # Engine and sidecar share the expert table's files: one user and group.
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  # The transfers' ports in transferPort+1 … transferPortEnd (the node applies it in
  # the pod's network namespace, as a kubelet does).
  {{- include "eplb-sidecar.podSysctls" $eplb | nindent 2 }}
containers:
  {{- range $local := until $perPod }}
  {{- $port := ternary "engine" (printf "engine-%d" $local) (eq $perPod 1) }}
  # One engine process per local rank (per GPU), as vLLM's and SGLang's workers are.
  - name: {{ if eq $perPod 1 }}engine{{ else }}engine-{{ $local }}{{ end }}
    image: {{ printf "%s:%s" $root.Values.engine.image (default $root.Chart.AppVersion $root.Values.engine.tag) }}
    command: [eplb-sidecar, engine]
    args:
      - --table-dir={{ $eplb.Values.tableDir }}
      - --pod-index=$(POD_INDEX)
      - --ranks-per-pod={{ $perPod }}
      - --local-rank={{ $local }}
      - --ranks={{ $root.Values.engine.ranks }}
      - --group={{ $groupArg }}
      - --layers={{ $root.Values.engine.layers }}
      - --experts={{ $root.Values.engine.experts }}
      - --slots-per-rank={{ $root.Values.engine.slotsPerRank }}
      - --hidden={{ $root.Values.engine.hidden }}
      - --intermediate={{ $root.Values.engine.intermediate }}
      - --top-k={{ $root.Values.engine.topK }}
      - --seed={{ $root.Values.engine.seed }}
      - --skew={{ $root.Values.engine.skew }}
      - --tokens-per-step={{ $root.Values.engine.tokensPerStep }}
      - --step-interval={{ $root.Values.engine.stepInterval }}
      {{- with $root.Values.engine.tokensPerSecond }}
      - --tokens-per-second={{ . }}
      {{- end }}
      - --bind=0.0.0.0
      - --port={{ add (int $root.Values.engine.port) $local }}
      {{- if eq $root.Values.engine.implementation "transformers" }}
      - --implementation=transformers
      - --model={{ $root.Values.engine.model }}
      - --dispatch-block={{ $root.Values.engine.dispatchBlock }}
      - --dist-init=file:///var/run/eplb-dist/{{ $groupArg }}/rendezvous
      {{- end }}
    env:
      - name: POD_INDEX
        valueFrom:
          fieldRef:
            fieldPath: metadata.labels['{{ $indexLabel }}']
      {{- if eq (toString $groupArg) "$(GROUP_INDEX)" }}
      - name: GROUP_INDEX  # the pod's group of the LeaderWorkerSet
        valueFrom:
          fieldRef:
            fieldPath: metadata.labels['leaderworkerset.sigs.k8s.io/group-index']
      {{- end }}
      - {name: OMP_NUM_THREADS, value: "1"}
    {{- if ne (toString $root.Values.engine.runAsUser) "" }}
    securityContext:
      runAsUser: {{ $root.Values.engine.runAsUser }}
      runAsGroup: {{ $root.Values.engine.runAsUser }}
    {{- end }}
    ports:
      - {name: {{ $port }}, containerPort: {{ add (int $root.Values.engine.port) $local }}}
    readinessProbe:
      httpGet: {path: /healthz, port: {{ $port }}}
      periodSeconds: 1
    volumeMounts:
      {{- include "eplb-sidecar.engineVolumeMounts" $eplb | nindent 6 }}
      {{- if $root.Values.distDir }}
      - {name: dist, mountPath: /var/run/eplb-dist}
      {{- end }}
  {{- end }}
  {{- include "eplb-sidecar.container" $eplb | nindent 2 }}
volumes:
  {{- include "eplb-sidecar.volumes" $eplb | nindent 2 }}
  {{- with $root.Values.checkpointDir }}
  - name: checkpoint
    hostPath: {path: {{ . }}, type: Directory}
  {{- end }}
  {{- if $root.Values.faults }}
  - name: faults
    emptyDir: {}
  {{- end }}
  {{- with $root.Values.distDir }}
  - name: dist
    hostPath: {path: {{ . }}, type: Directory}
{{- end }}
{{- end -}}
