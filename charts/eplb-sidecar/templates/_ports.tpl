{{/*
The ports of peer weight transfers. The sidecars meet at transferPort (the rendezvous
store), then gloo (NCCL on GPUs) connects each pair on ports its library takes from the
kernel's ephemeral range: neither library can be given ports (pytorch/gloo#54,
NVIDIA/nccl#388). So the pod's ephemeral range, the namespaced sysctl
net.ipv4.ip_local_port_range, is set to transferPort+1 … transferPortEnd: every port a
transfer binds or connects from is then in transferPort … transferPortEnd, which a
NetworkPolicy can allow between the pods of an EP group (eplb-operator's networkPolicy,
with the same sidecar.transferPort and sidecar.transferPortEnd). In the pod template:

  spec:
    securityContext:
      fsGroup: 65532
      {{- include "eplb-sidecar.podSysctls" $eplb | nindent 6 }}

It renders the `sysctls:` key (with extraSysctls after ours), or nothing for a sidecar that
moves no weights (a source other than table) and no extraSysctls.
*/}}

{{- define "eplb-sidecar.checkPorts" -}}
{{- $control := int .Values.controlPort }}
{{- $metrics := int .Values.metricsPort }}
{{- $transfer := int .Values.transferPort }}
{{- $end := int .Values.transferPortEnd }}
{{- if eq $control $metrics }}
{{- fail (printf "eplb-sidecar: controlPort and metricsPort are both %d: they must differ" $control) }}
{{- end }}
{{- if le $end $transfer }}
{{- fail (printf "eplb-sidecar: transferPortEnd (%d) must be above transferPort (%d): transfers take their ports from transferPort+1 … transferPortEnd" $end $transfer) }}
{{- end }}
{{- if or (lt (add1 $transfer) 1024) (gt $end 65535) }}
{{- fail (printf "eplb-sidecar: the transfer port range %d-%d must lie within 1024-65535 (the kernel refuses an ephemeral port range below net.ipv4.ip_unprivileged_port_start, 1024)" (add1 $transfer) $end) }}
{{- end }}
{{- range $name, $port := dict "controlPort" $control "metricsPort" $metrics }}
{{- if and (ge $port $transfer) (le $port $end) }}
{{- fail (printf "eplb-sidecar: %s %d lies in the transfer ports %d-%d (transferPort … transferPortEnd): move it out, or the pod's ephemeral ports could take it" $name $port $transfer $end) }}
{{- end }}
{{- end }}
{{- end -}}

{{- /* The value of net.ipv4.ip_local_port_range: "first last". */}}
{{- define "eplb-sidecar.ephemeralPorts" -}}
{{- include "eplb-sidecar.checkPorts" . -}}
{{ add1 (int .Values.transferPort) }} {{ int .Values.transferPortEnd }}
{{- end -}}

{{- define "eplb-sidecar.podSysctls" -}}
{{- $sysctls := list }}
{{- if eq .Values.source "table" }}
{{- $sysctls = append $sysctls (dict "name" "net.ipv4.ip_local_port_range" "value" (include "eplb-sidecar.ephemeralPorts" .)) }}
{{- end }}
{{- range .Values.extraSysctls }}
{{- /* A string, as the API wants it, even where YAML read a number (a reserved port). */}}
{{- $sysctls = append $sysctls (dict "name" .name "value" (toString .value)) }}
{{- end }}
{{- if $sysctls -}}
sysctls:
  {{- toYaml $sysctls | nindent 2 }}
{{- end }}
{{- end -}}
