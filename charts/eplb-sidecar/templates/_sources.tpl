{{/*
What each load source needs (values `source`, `loadSource`, `placement`; README "Balancing
vLLM / SGLang / TensorRT-LLM today"). Besides eplb-sidecar.container, engineVolumeMounts and
volumes (which follow `source`), the engine container includes:

  env:
    {{- include "eplb-sidecar.engineEnv" $eplb | nindent 4 }}
  args:
    {{- include "eplb-sidecar.engineFlags" $eplb | nindent 4 }}

For TensorRT-LLM, put eplb-sidecar.trtllmMoeConfig into the --extra_llm_api_options file.
*/}}

{{- define "eplb-sidecar.placementFile" -}}
{{- $keys := dict "sglang" "init-expert-location.json" "trtllm" "moe-load-balancer.yaml" "vllm-stats" "read-stats.jsonl" -}}
{{ .Values.placement.mountPath }}/{{ get $keys .Values.source }}
{{- end -}}

{{- define "eplb-sidecar.engineEnv" -}}
{{- $env := list }}
{{- if eq .Values.source "sglang" }}
{{- $env = append $env (dict "name" "SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR" "value" .Values.loadSource.statsDir) }}
{{- else if eq .Values.source "trtllm" }}
{{- $env = append $env (dict "name" "EXPERT_STATISTIC_PATH" "value" .Values.loadSource.statsDir) }}
{{- $env = append $env (dict "name" "EXPERT_STATISTIC_ITER_RANGE" "value" .Values.loadSource.trtllmIterRange) }}
{{- end }}
{{- if $env }}{{ toYaml $env }}{{ end }}
{{- end -}}

{{- define "eplb-sidecar.engineFlags" -}}
{{- $flags := list }}
{{- if eq .Values.source "sglang" }}
{{- if .Values.placement.name }}
{{- $flags = append $flags (printf "--init-expert-location=%s" (include "eplb-sidecar.placementFile" .)) }}
{{- end }}
{{- $flags = append $flags "--expert-distribution-recorder-mode=stat" }}
{{- else if eq .Values.source "vllm-stats" }}
{{- $config := dict "write_stats_path" (printf "%s/%s" .Values.loadSource.statsDir .Values.loadSource.vllmStatsFile) }}
{{- if .Values.placement.name }}
{{- $_ := set $config "read_stats_path" (include "eplb-sidecar.placementFile" .) }}
{{- end }}
{{- $flags = append $flags "--enable-eplb" }}
{{- $flags = append $flags (printf "--eplb-config=%s" (merge $config .Values.loadSource.vllmEplbConfig | toJson)) }}
{{- end }}
{{- if $flags }}{{ toYaml $flags }}{{ end }}
{{- end -}}

{{- define "eplb-sidecar.trtllmMoeConfig" -}}
moe_config:
  load_balancer: {{ include "eplb-sidecar.placementFile" . }}
{{- end -}}

{{- define "eplb-sidecar.sourceArgs" -}}
- serve
- --source={{ .Values.source }}
{{- if eq .Values.source "vllm-stats" }}
- --stats-path={{ .Values.loadSource.statsDir }}/{{ .Values.loadSource.vllmStatsFile }}
{{- else }}
- --stats-path={{ .Values.loadSource.statsDir }}
{{- end }}
{{- if eq .Values.source "sglang" }}
- --engine-url={{ .Values.loadSource.engineUrl }}
{{- end }}
{{- if and (eq .Values.source "trtllm") .Values.placement.name }}
- --placement-file={{ include "eplb-sidecar.placementFile" . }}
{{- end }}
{{- with .Values.loadSource.layerIds }}
- --layer-ids={{ . }}
{{- end }}
{{- with .Values.loadSource.experts }}
- --experts={{ . }}
{{- end }}
- --poll-seconds={{ .Values.loadSource.pollSeconds }}
- --metrics-port={{ .Values.metricsPort }}
{{- end -}}

{{- define "eplb-sidecar.sourceMounts" -}}
- name: eplb-stats
  mountPath: {{ .Values.loadSource.statsDir }}
{{- if .Values.placement.name }}
- name: eplb-placement
  mountPath: {{ .Values.placement.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}
