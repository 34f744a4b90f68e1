{{- /* Cross-key checks values.schema.json cannot express; rendered by every install. */ -}}
{{- define "pm.validate" -}}
{{- if gt (int .Values.hdfs.replication) (int .Values.hdfs.datanode.replicas) -}}
{{- fail (printf "hdfs.replication (%d) is larger than hdfs.datanode.replicas (%d): blocks could never be fully replicated" (int .Values.hdfs.replication) (int .Values.hdfs.datanode.replicas)) -}}
{{- end -}}
{{- if gt (int .Values.ray.serve.minReplicas) (int .Values.ray.serve.maxReplicas) -}}
{{- fail "ray.serve.minReplicas is larger than ray.serve.maxReplicas" -}}
{{- end -}}
{{- if gt (int .Values.ray.workers.minReplicas) (int .Values.ray.workers.maxReplicas) -}}
{{- fail "ray.workers.minReplicas is larger than ray.workers.maxReplicas" -}}
{{- end -}}
{{- if and .Values.secrets.apiKeys.existingSecret .Values.secrets.apiKeys.values -}}
{{- fail "secrets.apiKeys: give existingSecret or values, not both" -}}
{{- end -}}
{{- end -}}
