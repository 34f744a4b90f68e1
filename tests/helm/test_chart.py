"""The Helm chart: lint, schemas (Kubernetes, KubeRay, Ray Serve, platform settings) and the
promises of docs/deploy-helm.md on the rendered manifests."""

from __future__ import annotations

import base64

import copy
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml

from tests.helm.conftest import CHART, PRODUCTION, ROOT, crd_errors, helm, kube_errors

WORKLOADS = ("Deployment", "StatefulSet")
SECRET_API_KEY = "crm:0123456789abcdef"
SECRET_PII = "k1:c2VjcmV0LWtleS1vZi0zMi1ieXRlcy0wMTIzNDU2Nzg5YWI="


def _site(xml_text: str) -> dict[str, str]:
    root = ET.fromstring(xml_text.strip())
    return {p.findtext("name"): p.findtext("value") for p in root.iter("property")}


def _pod_specs(rendered) -> list[tuple[str, dict]]:
    """(owner, pod spec) of every pod the chart describes, Ray nodes and batch jobs included."""
    specs = []
    for doc in rendered:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        spec = doc.get("spec", {})
        if doc["kind"] in WORKLOADS:
            specs.append((name, spec["template"]["spec"]))
        elif doc["kind"] == "Job":
            specs.append((name, spec["template"]["spec"]))
        elif doc["kind"] == "CronJob":
            specs.append((name, spec["jobTemplate"]["spec"]["template"]["spec"]))
        elif doc["kind"] in ("RayService", "RayJob"):
            cluster = spec.get("rayClusterConfig") or spec["rayClusterSpec"]
            specs.append((f"{name} head", cluster["headGroupSpec"]["template"]["spec"]))
            for group in cluster["workerGroupSpecs"]:
                specs.append((f"{name} {group['groupName']}", group["template"]["spec"]))
    return specs


# --- lint and schemas ----------------------------------------------------------------------

@pytest.mark.parametrize("value_files", [(), (PRODUCTION,)], ids=["default", "production"])
def test_helm_lint_strict_passes(tools, value_files):
    args = ["lint", str(CHART), "--strict"]
    for f in value_files:
        args += ["-f", str(f)]
    out = helm(tools, *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_every_builtin_resource_validates_against_the_kubernetes_schemas(rendered):
    builtin = [d for d in rendered if not d["apiVersion"].startswith("ray.io/")]
    assert len(builtin) >= 25
    errors = {f"{d['kind']}/{d['metadata']['name']}": kube_errors(d) for d in builtin}
    assert not {k: v for k, v in errors.items() if v}


def test_ray_resources_validate_against_kuberay_crds(tools, rendered):
    ray_docs = [d for d in rendered if d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for d in ray_docs} >= {"RayService"}
    for doc in ray_docs:
        assert crd_errors(tools, doc) == [], doc["kind"]


def test_the_validators_reject_a_misspelt_field(tools, render):
    """Neither schema check is vacuous: one wrong field name is refused by each."""
    docs = render()
    statefulset = copy.deepcopy(docs.one("StatefulSet", "-datanode"))
    statefulset["spec"]["replica"] = statefulset["spec"].pop("replicas")
    assert any("replica" in e for e in kube_errors(statefulset))

    service = copy.deepcopy(docs.one("RayService", "-serve"))
    cluster = service["spec"]["rayClusterConfig"]
    cluster["enableInTreeAutoscalling"] = cluster.pop("enableInTreeAutoscaling")
    assert any("enableInTreeAutoscalling" in e for e in crd_errors(tools, service))

    service = copy.deepcopy(docs.one("RayService", "-serve"))
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = "one"
    assert crd_errors(tools, service)


def test_the_chart_renders_at_its_oldest_supported_kubernetes(render):
    docs = render(kube_version="1.27.0")
    assert docs.of_kind("CronJob") and docs.of_kind("PodDisruptionBudget")


def test_the_settings_part_of_values_schema_is_generated_from_cluster_settings():
    out = subprocess.run([sys.executable, str(ROOT / "helm" / "settings_schema.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# --- the values file is the documentation ------------------------------------------------------

def _leaf_paths(node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict) and value and key not in FREE_FORM:
            yield from _leaf_paths(value, path + ".")


FREE_FORM = {"resources", "requests", "limits", "settings", "podSecurityContext", "securityContext",
             "annotations", "podLabels", "podAnnotations", "nodeSelector", "affinity"}


def _schema_paths(node, prefix=""):
    for key, value in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        yield path
        if key not in FREE_FORM:
            yield from _schema_paths(value, path + ".")


def test_values_yaml_and_the_schema_describe_the_same_keys():
    import json

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(_leaf_paths(values)) == set(_schema_paths(schema))


# Keys whose meaning values.yaml defines once in its header; the inside of Kubernetes-shaped blocks.
COMMON_KEYS = {"heap", "resources", "storage", "size", "storageClass", "replicas", "enabled"}
KUBERNETES_SHAPED = {"resources", "requests", "limits", "podSecurityContext", "securityContext", "operatorFrom"}


def test_every_value_is_documented_key_by_key():
    """Each key of values.yaml has a "# --" comment right above it, unless it is one of the
    common keys the file's header defines or lies inside a Kubernetes-shaped block."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    header = "\n".join(lines[:15])
    assert all(re.search(rf"^#\s+{key}\s", header, re.M) for key in COMMON_KEYS - {"size", "storageClass"})
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z]\w*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inside = any(k in KUBERNETES_SHAPED for _, k in stack)
        stack.append((indent, key))
        if inside or key in COMMON_KEYS:
            continue
        j = i - 1
        comment = []
        while j >= 0 and lines[j].strip().startswith("#"):
            comment.append(lines[j])
            j -= 1
        if not any("# --" in c for c in comment):
            undocumented.append(".".join(k for _, k in stack))
    assert undocumented == []


# --- a wrong value fails with a clear message ----------------------------------------------

@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"hdfs": {"replicaton": 3}}, r"at '/hdfs': additional properties 'replicaton' not allowed"),
        ({"hbase": {"regionserver": {"replicas": "two"}}}, r"at '/hbase/regionserver/replicas': got string, want integer"),
        ({"settings": {"serve": {"grpc_prot": 9100}}}, r"at '/settings/serve': additional properties 'grpc_prot' not allowed"),
        ({"settings": {"serve": {"ingress": "fast"}}}, r"at '/settings/serve/ingress': value must be one of 'proxy', 'direct'"),
        ({"hdfs": {"datanode": {"heap": "1gb"}}}, r"at '/hdfs/datanode/heap': '1gb' does not match pattern"),
        ({"hdfs": {"replication": 3}}, r"hdfs.replication \(3\) is larger than hdfs.datanode.replicas \(2\)"),
        ({"ray": {"serve": {"minReplicas": 5, "maxReplicas": 2}}}, r"ray.serve.minReplicas is larger than ray.serve.maxReplicas"),
    ],
    ids=["misspelt-key", "wrong-type", "misspelt-settings-key", "bad-settings-enum", "bad-heap",
         "replication-above-datanodes", "autoscaling-bounds"],
)
def test_a_wrong_value_fails_and_names_it(tools, tmp_path, values, expected):
    out = helm(tools, "template", "pm", str(CHART), values=values, tmp_path=tmp_path)
    assert out.returncode != 0
    assert re.search(expected, out.stderr), out.stderr
    assert "goroutine" not in out.stderr and "panic" not in out.stderr


# --- the promises ----------------------------------------------------------------------------

@pytest.mark.parametrize(("value_files", "datanodes", "regionservers", "zookeepers"),
                         [((), 2, 2, 1), ((PRODUCTION,), 3, 3, 3)], ids=["default", "production"])
def test_hdfs_and_hbase_sizes(render, value_files, datanodes, regionservers, zookeepers):
    docs = render(*value_files)
    hadoop = docs.one("ConfigMap", "-hadoop-conf")["data"]
    assert _site(hadoop["hdfs-site.xml"])["dfs.replication"] == "2"
    assert docs.one("StatefulSet", "-datanode")["spec"]["replicas"] == datanodes
    assert docs.one("StatefulSet", "-namenode")["spec"]["replicas"] == 1
    assert docs.one("StatefulSet", "-hbase-regionserver")["spec"]["replicas"] == regionservers
    zk = docs.one("StatefulSet", "-zookeeper")
    assert zk["spec"]["replicas"] == zookeepers
    hbase = docs.one("ConfigMap", "-hbase-conf")["data"]
    assert len(_site(hbase["hbase-site.xml"])["hbase.zookeeper.quorum"].split(",")) == zookeepers
    assert len(re.findall(r"^server\.\d+=", hbase["zoo.cfg"], re.M)) == zookeepers
    # Every DataNode and RegionServer may be disrupted one at a time, never two.
    for suffix in ("-datanode", "-hbase-regionserver", "-zookeeper"):
        assert docs.one("PodDisruptionBudget", suffix)["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize(("value_files", "workers", "serve"),
                         [((), (1, 4), (1, 4)), ((PRODUCTION,), (2, 10), (2, 16))], ids=["default", "production"])
def test_rayservice_autoscaling_bounds_and_serve_config(render, value_files, workers, serve):
    from ray.serve.schema import ServeDeploySchema

    docs = render(*value_files)
    service = docs.one("RayService", "-serve")
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    (group,) = cluster["workerGroupSpecs"]
    assert (group["minReplicas"], group["maxReplicas"]) == workers
    assert group["replicas"] == workers[0]

    raw = yaml.safe_load(service["spec"]["serveConfigV2"])
    config = ServeDeploySchema.model_validate(raw)
    scaling = config.applications[0].deployments[0].autoscaling_config
    assert (scaling["min_replicas"], scaling["max_replicas"]) == serve
    # Apart from the settings it reads and the replica bounds, the chart deploys what
    # ray_apps/serve/serve-config.yaml does (which tests/unit/ray_apps/serve/test_serve_config.py checks
    # against the code).
    repo = yaml.safe_load((ROOT / "ray_apps" / "serve" / "serve-config.yaml").read_text())
    for cfg, args in ((raw, {"settings": "/etc/pmkt/settings.yaml"}), (repo, {"profile": "cluster"})):
        (app,) = cfg["applications"]
        assert app.pop("args") == args
        for key in ("min_replicas", "max_replicas"):
            app["deployments"][0]["autoscaling_config"].pop(key)
    assert raw == repo

    # The head's ports are the ones KubeRay names for Serve (serve, serve-grpc) and match it.
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert (ports["serve"], ports["serve-grpc"]) == (config.http_options.port, config.grpc_options.port)


def test_the_settings_configmap_loads_with_the_platform_schema_and_names_rendered_services(rendered, tmp_path):
    from cluster.core.settings import load_settings

    path = tmp_path / "settings.yaml"
    path.write_text(rendered.settings_yaml())
    s = load_settings(path=path, env={"PMKT_HOME": str(tmp_path)})
    assert s.profile == "cluster"
    assert s.lake.backend == "hdfs" and s.profile_store.backend == "hbase"
    assert s.lake.hdfs.replication == 2

    services = {d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]} for d in rendered.of_kind("Service")}
    nn_host, nn_port = re.match(r"hdfs://([^:/]+):(\d+)/", s.lake.hdfs.fs_uri).groups()
    assert int(nn_port) in services[nn_host]
    assert s.profile_store.hbase.port in services[s.profile_store.hbase.host]
    if s.spark.master.startswith("spark://"):
        host, port = s.spark.master[len("spark://"):].split(":")
        assert int(port) in services[host]
        assert not rendered.of_kind("Role")
    else:
        assert s.spark.master == "k8s://https://kubernetes.default.svc"
        assert rendered.of_kind("Role") and rendered.of_kind("RoleBinding")
    # The serving pods read the same file.
    service = rendered.one("RayService", "-serve")
    assert yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["settings"] == "/etc/pmkt/settings.yaml"


def test_probes_and_resources_on_every_long_running_container(rendered):
    for owner, spec in _pod_specs(rendered):
        batch = owner.startswith(("Job/", "CronJob/"))
        for container in spec["containers"] + spec.get("initContainers", []):
            where = f"{owner} {container['name']}"
            assert container["resources"]["requests"].get("memory"), where
            assert container["resources"]["limits"].get("memory"), where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
        for container in spec["containers"]:
            where = f"{owner} {container['name']}"
            if batch:
                # A build has no probes; it is bounded by activeDeadlineSeconds instead.
                assert "livenessProbe" not in container, where
            else:
                assert container.get("readinessProbe") and container.get("livenessProbe"), where
    for job in rendered.of_kind("Job"):
        assert job["spec"]["activeDeadlineSeconds"] > 0
    for cron in rendered.of_kind("CronJob"):
        assert cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 0
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_no_secret_value_outside_a_secret(render):
    docs = render(sets=(f"secrets.apiKeys.values={{{SECRET_API_KEY}}}", f"secrets.piiKeys.value={SECRET_PII}"))
    secrets = {d["metadata"]["name"]: d for d in docs.of_kind("Secret")}
    assert {s["stringData"].get("api-keys") or s["stringData"].get("pii-keys")
            for s in secrets.values() if "stringData" in s} == {SECRET_API_KEY, SECRET_PII}
    # The registry key: generated (64 random characters) when none is given, kept on upgrades.
    generated = [s for s in secrets.values() if "registry-key" in s.get("data", {})]
    assert len(generated) == 1 and len(base64.b64decode(generated[0]["data"]["registry-key"])) == 64
    assert generated[0]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for doc in docs:
        if doc["kind"] != "Secret":
            text = yaml.safe_dump(doc)
            assert SECRET_API_KEY.split(":")[1] not in text and SECRET_PII.split(":")[1] not in text, doc["kind"]
    # Every platform container takes the keys from those Secrets.
    for owner, spec in _pod_specs(docs):
        for container in spec["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            if "PMKT_SETTINGS" not in env:
                continue
            # Each pod gets the keys its work needs and no other: Ray (serving, tuning) the API
            # keys and the registry key; the Spark build (ingest) the PII keys.
            ray = owner.startswith(("RayService/", "RayJob/"))
            wanted = {"PMKT_API_KEYS", "PMKT_REGISTRY_KEY"} if ray else {"PMKT_PII_KEYS"}
            assert {n for n in env if n in {"PMKT_API_KEYS", "PMKT_PII_KEYS", "PMKT_REGISTRY_KEY"}} == wanted, owner
            for name in wanted:
                assert env[name]["valueFrom"]["secretKeyRef"]["name"] in secrets, owner


def test_existing_secrets_are_referenced_not_created(render, tmp_path):
    docs = render(PRODUCTION)
    assert docs.of_kind("Secret") == []
    refs = set()
    for _, spec in _pod_specs(docs):
        for container in spec["containers"]:
            for e in container.get("env", []):
                if "secretKeyRef" in e.get("valueFrom", {}):
                    refs.add(e["valueFrom"]["secretKeyRef"]["name"])
    assert refs == {"pmkt-api-keys", "pmkt-pii-keys", "pmkt-registry-key"}
    # With the keys in an existing Secret the API requires them.
    from cluster.core.settings import load_settings

    path = tmp_path / "settings.yaml"
    path.write_text(docs.settings_yaml())
    assert load_settings(path=path, env={"PMKT_HOME": str(tmp_path)}).serve.auth.required is True


def test_network_policies_deny_by_default_and_admit_only_the_release_the_api_and_the_operator(render):
    docs = render()
    policies = docs.of_kind("NetworkPolicy")
    release = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "pm"}}}
    # A default deny over every pod of the release (no ingress rule at all).
    deny = [p for p in policies if p["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/instance": "pm"}}
            and p["spec"]["policyTypes"] == ["Ingress"] and not p["spec"].get("ingress")]
    assert len(deny) == 1
    # Every workload pod is under it (it carries the release label).
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            assert doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] == "pm", doc["metadata"]
    # The allows: from the release's own pods; from outside only the API ports and, for the KubeRay
    # operator, the dashboard.
    outside = []
    for p in policies:
        for rule in p["spec"].get("ingress") or []:
            if rule.get("from") == [release] and "ports" not in rule:
                continue
            outside.append(({port["port"] for port in rule["ports"]}, rule.get("from")))
    operator = [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]
    assert sorted(outside, key=str) == sorted([({8000, 9000}, None), ({8265}, operator)], key=str)
    # Spark executors (pods Spark creates) carry the release label, so the policies admit them.
    settings = yaml.safe_load(docs.settings_yaml())
    assert settings["spark"]["conf"]["spark.kubernetes.executor.label.app.kubernetes.io/instance"] == "pm"
    assert not render(sets=("networkPolicy.enabled=false",)).of_kind("NetworkPolicy")


def test_the_build_runs_the_chain_in_order(render):
    docs = render(PRODUCTION)
    cron = docs.one("CronJob", "-nightly-build")
    script = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    steps = re.findall(r"^pmkt (.+)$", script, re.M)
    assert steps == ["ingest /input", "clean", "features rfm", "features clv", "features tags",
                     "features tables", "features profiles"]
    assert cron["spec"]["timeZone"] == "Asia/Shanghai"
    job = docs.one("Job", "-initial-build")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [script]
    # Each step is a pmkt command that exists.
    from click.testing import CliRunner

    from cluster.cli import cli

    for step in steps:
        result = CliRunner().invoke(cli, [*step.split()[:2 if step.startswith("features") else 1], "--help"])
        assert result.exit_code == 0, (step, result.output)


def test_the_tune_rayjob_runs_a_real_tune_command(render):
    from click.testing import CliRunner

    from cluster.cli import cli

    docs = render(sets=("ray.tune.enabled=true", "ray.tune.family=churn", "ray.tune.scheduler=asha"))
    job = docs.one("RayJob", "-tune-churn")
    args = job["spec"]["entrypoint"].split()
    assert args[:2] == ["pmkt", "tune"]
    result = CliRunner().invoke(cli, [*args[1:], "--help"])
    assert result.exit_code == 0, result.output
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert not render().of_kind("RayJob")


def test_notes_name_the_api_service_and_warn_about_an_open_api(tools):
    def notes(*sets: str) -> str:
        args = ["install", "pm", str(CHART), "--dry-run=client", "--namespace", "marketing"]
        for s in sets:
            args += ["--set", s]
        out = helm(tools, *args)
        assert out.returncode == 0, out.stderr
        return out.stdout.split("NOTES:", 1)[1]

    open_api = notes()
    assert "svc/pm-precision-marketing-serve-serve-svc 8000" in open_api
    assert "WARNING: no API keys" in open_api
    assert "WARNING" not in notes("secrets.apiKeys.existingSecret=pmkt-api-keys")


def test_every_pod_runs_with_the_runtime_default_seccomp_profile(render):
    for owner, spec in _pod_specs(render()):
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, owner


def test_every_container_has_a_read_only_root_and_a_writable_tmp(render):
    for value_files in ((), (PRODUCTION,)):
        for owner, spec in _pod_specs(render(*value_files)):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for c in spec.get("initContainers", []) + spec["containers"]:
                assert c["securityContext"]["readOnlyRootFilesystem"] is True, (owner, c["name"])
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, (owner, c["name"])
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                assert "emptyDir" in volumes[mounts["/tmp"]], (owner, c["name"])


def test_each_component_has_its_own_service_account_and_only_two_mount_a_token(render):
    for sets, spark_token in (((), True), (("spark.mode=standalone",), False)):
        docs = render(sets=sets)
        accounts = {a["metadata"]["name"]: a for a in docs.of_kind("ServiceAccount")}
        assert set(accounts) == {f"pm-precision-marketing-{c}" for c in ("storage", "spark", "ray-head", "ray-worker")}
        used = {}
        for owner, spec in _pod_specs(docs):
            used.setdefault(spec["serviceAccountName"], set()).add(owner.split()[-1] if " " in owner else owner)
            token = spec["automountServiceAccountToken"]
            expected = {"pm-precision-marketing-ray-head": True,
                        "pm-precision-marketing-spark": spark_token}.get(spec["serviceAccountName"], False)
            assert token is expected, owner
        assert set(used) <= set(accounts)
        storage = {o for o in used.get("pm-precision-marketing-storage", ())}
        assert any("namenode" in o for o in storage) and any("hbase-thrift" in o for o in storage)
        # The Spark driver's Role is bound to the Spark account only, and only with executor pods.
        bindings = docs.of_kind("RoleBinding")
        if spark_token:
            (binding,) = bindings
            assert [s["name"] for s in binding["subjects"]] == ["pm-precision-marketing-spark"]
        else:
            assert bindings == []


def test_ray_runs_with_token_authentication(render):
    docs = render(sets=("ray.tune.enabled=true",))
    for doc in docs.of_kind("RayService") + docs.of_kind("RayJob"):
        cluster = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
        assert cluster["authOptions"] == {"mode": "token"}, doc["metadata"]["name"]
    for owner, spec in _pod_specs(docs):
        for c in spec["containers"]:
            # KubeRay sets RAY_AUTH_MODE and the token; nothing of the chart may turn it off.
            assert "RAY_AUTH_MODE" not in {e["name"] for e in c.get("env", [])}, owner
