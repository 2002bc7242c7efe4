{{/* _helpers.tpl: names, labels, images, the etcd endpoint list and value checks shared by the templates. */}}

{{- define "strata.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; "strata" for a release named strata, so that the worker StatefulSets are
     strata-worker-<pool>, the kubernetes actuator's default name template. */}}
{{- define "strata.fullname" -}}
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

{{- define "strata.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The strata cluster name: keys under /strata/<cluster>/. */}}
{{- define "strata.cluster" -}}
{{- default .Release.Name .Values.cluster }}
{{- end }}

{{- define "strata.labels" -}}
helm.sh/chart: {{ include "strata.chart" . }}
{{ include "strata.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "strata.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strata.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "strata.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The worker image of a pool: the CUDA build for GPU pools. Argument: dict "root" $ "pool" $pool. */}}
{{- define "strata.workerImage" -}}
{{- $root := .root }}
{{- if gt (int .pool.gpus) 0 }}
{{- printf "%s:%s%s" $root.Values.workerImage.repository (default $root.Chart.AppVersion $root.Values.workerImage.tag) $root.Values.workerImage.suffix }}
{{- else }}
{{- include "strata.image" $root }}
{{- end }}
{{- end }}

{{- define "strata.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-coordinator" (include "strata.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "strata.etcdHeadless" -}}
{{- printf "%s-etcd-headless" (include "strata.fullname" .) }}
{{- end }}

{{/* etcd endpoints as host:port, comma-separated, every member listed so that clients fail over. */}}
{{- define "strata.etcdEndpoints" -}}
{{- if .Values.etcd.enabled }}
{{- $full := include "strata.fullname" . }}
{{- $hl := include "strata.etcdHeadless" . }}
{{- $eps := list }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $eps = append $eps (printf "%s-etcd-%d.%s.%s.svc.%s:%d" $full $i $hl $.Release.Namespace $.Values.clusterDomain (int $.Values.etcd.clientPort)) }}
{{- end }}
{{- join "," $eps }}
{{- else }}
{{- required "etcd.enabled is false: set externalEtcd.endpoints (host:port[,host:port])" .Values.externalEtcd.endpoints }}
{{- end }}
{{- end }}

{{/* The model volume, mounted read-only by workers and coordinators. Empty for type none. */}}
{{- define "strata.modelVolume" -}}
{{- $v := .Values.model.volume }}
{{- if eq $v.type "pvc" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ required "model.volume.claimName is required for type pvc" $v.claimName }}
    readOnly: true
{{- else if eq $v.type "hostPath" }}
- name: model
  hostPath:
    path: {{ required "model.volume.hostPath is required for type hostPath" $v.hostPath }}
    type: Directory
{{- else if ne $v.type "none" }}
{{- fail (printf "model.volume.type must be pvc, hostPath or none, not %q" $v.type) }}
{{- end }}
{{- end }}

{{- define "strata.modelMount" -}}
{{- if ne .Values.model.volume.type "none" }}
- name: model
  mountPath: {{ .Values.model.volume.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Checks a pool's policy against docs/autoscaling.md's bounds, so that a bad value fails the
     install instead of being refused later by the coordinator. Argument: dict "name" $name "pool" $pool. */}}
{{- define "strata.checkPolicy" -}}
{{- $p := .pool.policy }}
{{- $n := .name }}
{{- $known := list "min_replicas" "max_replicas" "ttft_p90_ms" "itl_p90_ms" "queue_per_replica" "kv_usage" "scale_up_step" "scale_down_step" "scale_up_window_s" "scale_down_window_s" "cooldown_s" "gpus_per_replica" "gpu_budget" "mode" "interval_s" }}
{{- range $k, $_ := $p }}
{{- if not (has $k $known) }}
{{- fail (printf "pools.%s.policy.%s: unknown policy field (see docs/autoscaling.md)" $n $k) }}
{{- end }}
{{- end }}
{{- if gt (int $p.min_replicas) (int $p.max_replicas) }}
{{- fail (printf "pools.%s.policy: min_replicas %v is above max_replicas %v" $n $p.min_replicas $p.max_replicas) }}
{{- end }}
{{- if lt (int $p.max_replicas) 1 }}
{{- fail (printf "pools.%s.policy: max_replicas %v is below the minimum 1" $n $p.max_replicas) }}
{{- end }}
{{- if not (has $p.mode (list "active" "observe")) }}
{{- fail (printf "pools.%s.policy.mode must be active or observe, not %v" $n $p.mode) }}
{{- end }}
{{- if or (lt (float64 $p.kv_usage) 0.0) (gt (float64 $p.kv_usage) 1.0) }}
{{- fail (printf "pools.%s.policy.kv_usage %v is outside 0..1" $n $p.kv_usage) }}
{{- end }}
{{- $gpus := int (default .pool.gpus $p.gpus_per_replica) }}
{{- if and (gt (int $p.gpu_budget) 0) (gt (mul (int $p.min_replicas) $gpus) (int $p.gpu_budget)) }}
{{- fail (printf "pools.%s.policy: min_replicas x gpus_per_replica (%d) does not fit gpu_budget %v" $n (mul (int $p.min_replicas) $gpus) $p.gpu_budget) }}
{{- end }}
{{- end }}

{{/* The policy JSON stored in etcd: the pool's policy, with gpus_per_replica from pools.<pool>.gpus
     unless given. Argument: the pool. */}}
{{- define "strata.policyJson" -}}
{{- merge (dict) .policy (dict "gpus_per_replica" (int .gpus)) | toJson }}
{{- end }}

{{/* Chart-wide checks, included once from the coordinator template. */}}
{{- define "strata.validate" -}}
{{- if not (has .Values.coordinator.actuator (list "kubernetes" "none")) }}
{{- fail (printf "coordinator.actuator must be kubernetes or none on Kubernetes, not %q" .Values.coordinator.actuator) }}
{{- end }}
{{- if and .Values.etcd.enabled (not (has (int .Values.etcd.replicas) (list 1 3 5))) }}
{{- fail "etcd.replicas must be 1, 3 or 5 (an odd member count keeps a quorum)" }}
{{- end }}
{{- if le (int .Values.worker.terminationMarginSeconds) 0 }}
{{- fail "worker.terminationMarginSeconds must be above 0: the grace period must outlast the drain" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- $enabled := 0 }}
{{- range $name, $pool := .Values.pools }}
{{- if not (has $name (list "unified" "prefill" "decode")) }}
{{- fail (printf "pools.%s: pools are unified, prefill and decode" $name) }}
{{- end }}
{{- if $pool.enabled }}
{{- $enabled = add1 $enabled }}
{{- include "strata.checkPolicy" (dict "name" $name "pool" $pool) }}
{{- end }}
{{- end }}
{{- if eq $enabled 0 }}
{{- fail "no worker pool is enabled: enable pools.unified, or pools.prefill and pools.decode" }}
{{- end }}
{{- end }}
