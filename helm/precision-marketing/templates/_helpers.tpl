{{/* Names, labels and the image, shared by every template. */}}

{{- define "pm.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped name: <release>-precision-marketing, or the release name if it already has it. */}}
{{- define "pm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's resource name: pm.fullname-<component> (at most 63 characters). */}}
{{- define "pm.component" -}}
{{- printf "%s-%s" (include "pm.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: precision-marketing
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "namenode"). */}}
{{- define "pm.selector" -}}
app.kubernetes.io/name: {{ include "pm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The ServiceAccount of one component (storage, spark, ray-head, ray-worker): its own, so
each gets only its rights; with serviceAccount.create=false, serviceAccount.name (or "default")
for all. Call with (dict "root" $ "component" "storage"). */}}
{{- define "pm.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create -}}
{{- include "pm.component" (dict "root" .root "component" (printf "%s%s" (default "" .root.Values.serviceAccount.name) .component)) -}}
{{- else -}}
{{- default "default" .root.Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The ServiceAccounts the chart makes, with whether their pods mount the API token: only the
Ray head (KubeRay binds its autoscaler Role to it) and, in spark.mode=kubernetes, the Spark driver
(it creates its executor pods) talk to the Kubernetes API. */}}
{{- define "pm.serviceAccounts" -}}
storage: false
spark: {{ eq .Values.spark.mode "kubernetes" }}
ray-head: true
ray-worker: false
{{- end -}}

{{/* Pod-level ServiceAccount lines of a component. */}}
{{- define "pm.podAccount" -}}
serviceAccountName: {{ include "pm.serviceAccountName" . }}
automountServiceAccountToken: {{ get (include "pm.serviceAccounts" .root | fromYaml) .component }}
{{- end -}}

{{/* In-cluster DNS names of the services the platform's clients use. */}}
{{- define "pm.namenodeHost" -}}{{ include "pm.component" (dict "root" . "component" "namenode") }}{{- end -}}
{{- define "pm.zookeeperHost" -}}{{ include "pm.component" (dict "root" . "component" "zookeeper") }}{{- end -}}
{{- define "pm.thriftHost" -}}{{ include "pm.component" (dict "root" . "component" "hbase-thrift") }}{{- end -}}
{{/* KubeRay names the RayService's Serve Service <rayservice>-serve-svc. */}}
{{- define "pm.serveHost" -}}{{ include "pm.component" (dict "root" . "component" "serve") }}-serve-svc{{- end -}}

{{- define "pm.apiKeysSecret" -}}
{{- default (include "pm.component" (dict "root" . "component" "api-keys")) .Values.secrets.apiKeys.existingSecret -}}
{{- end -}}
{{- define "pm.registryKeySecret" -}}
{{- default (include "pm.component" (dict "root" . "component" "registry-key")) .Values.secrets.registryKey.existingSecret -}}
{{- end -}}
{{- define "pm.piiKeysSecret" -}}
{{- default (include "pm.component" (dict "root" . "component" "pii-keys")) .Values.secrets.piiKeys.existingSecret -}}
{{- end -}}

{{/* Environment of a platform container: the settings file and the keys it needs from Secrets,
and no other. Called with (dict "root" $ "keys" (list "api" "pii" "registry")): the Ray pods get
the API keys and the registry key (serving checks keys and verifies models; tuning signs them),
the Spark build gets the PII keys (ingest encrypts ID numbers) and nothing else. */}}
{{- define "pm.platformEnv" -}}
{{- $root := .root -}}
- name: PMKT_SETTINGS
  value: /etc/pmkt/settings.yaml
# The root file system is read-only: caches and dot-files go to the /tmp emptyDir.
- name: HOME
  value: /tmp
{{- if has "api" .keys }}
- name: PMKT_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "pm.apiKeysSecret" $root }}
      key: api-keys
      optional: true
{{- end }}
{{- if has "pii" .keys }}
- name: PMKT_PII_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "pm.piiKeysSecret" $root }}
      key: pii-keys
      optional: true
{{- end }}
{{- if has "registry" .keys }}
- name: PMKT_REGISTRY_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "pm.registryKeySecret" $root }}
      key: registry-key
{{- end }}
{{- end -}}

{{/* The pod template of a Ray node (head or worker) running the platform image. */}}
{{- define "pm.rayPod" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "pm.selector" (dict "root" $root "component" (ternary "ray-head" "ray-worker" .head)) | nindent 4 }}
    {{- with $root.Values.podLabels }}{{ toYaml . | nindent 4 }}{{ end }}
  {{- with $root.Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- include "pm.podAccount" (dict "root" $root "component" (ternary "ray-head" "ray-worker" .head)) | nindent 2 }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ ternary "ray-head" "ray-worker" .head }}
      image: {{ include "pm.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      env:
        {{- include "pm.platformEnv" (dict "root" $root "keys" (list "api" "registry")) | nindent 8 }}
      ports:
        {{- if .head }}
        - {name: gcs, containerPort: 6379}
        - {name: dashboard, containerPort: 8265}
        - {name: client, containerPort: 10001}
        - {name: serve, containerPort: {{ $root.Values.ray.serve.httpPort }}}
        - {name: serve-grpc, containerPort: {{ $root.Values.ray.serve.grpcPort }}}
        {{- end }}
        - {name: metrics, containerPort: 8080}
      readinessProbe:
        exec:
          command: [bash, -c, "wget -q -T 2 -O - http://localhost:52365/api/local_raylet_healthz | grep success"]
        periodSeconds: 10
        timeoutSeconds: 5
        failureThreshold: 6
      livenessProbe:
        exec:
          command: [bash, -c, "wget -q -T 2 -O - http://localhost:52365/api/local_raylet_healthz | grep success"]
        initialDelaySeconds: 60
        periodSeconds: 15
        timeoutSeconds: 5
        failureThreshold: 8
      resources:
        {{- toYaml .resources | nindent 8 }}
      volumeMounts:
        - {name: settings, mountPath: /etc/pmkt, readOnly: true}
        - {name: tmp, mountPath: /tmp}
  volumes:
    - name: settings
      configMap:
        name: {{ include "pm.component" (dict "root" $root "component" "settings") }}
    - name: tmp
      emptyDir: {}
  {{- with $root.Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
