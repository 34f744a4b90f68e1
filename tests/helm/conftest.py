"""Render the Helm chart with the pinned helm (helm/tools.sh) and validate what it renders.

Nothing here needs a Kubernetes cluster: the manifests are checked against the Kubernetes
OpenAPI schemas shipped by the ``kubernetes-validate`` package and against KubeRay's CRDs
(from the pinned KubeRay Go module), both with unknown fields rejected, the way
``kubectl apply --validate=strict`` would.
"""

from __future__ import annotations

import copy
import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "precision-marketing"
PRODUCTION = ROOT / "helm" / "values-production.yaml"
# The chart's kubeVersion floor and the newest Kubernetes kubernetes-validate ships schemas for.
KUBE_VERSIONS = ("1.27.0", "1.37.0")


@dataclass(frozen=True)
class Tools:
    helm: Path
    crds: Path


@pytest.fixture(scope="session")
def tools() -> Tools:
    """Build (or find) the pinned helm and KubeRay CRDs; a failure here fails the tests."""
    out = subprocess.run([str(ROOT / "helm" / "tools.sh")], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, f"helm/tools.sh failed:\n{out.stdout}\n{out.stderr}"
    paths = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return Tools(helm=Path(paths["HELM"]), crds=Path(paths["KUBERAY_CRDS"]))


def helm(tools: Tools, *args: str, values: dict | None = None, tmp_path: Path | None = None):
    """Run helm; ``values`` (a dict) is written to a file and given with -f after ``args``."""
    cmd = [str(tools.helm), *args]
    if values is not None:
        assert tmp_path is not None
        path = tmp_path / f"values-{len(list(tmp_path.glob('values-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(values))
        cmd += ["-f", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


class Rendered(list):
    """The documents of one ``helm template`` run, with lookups by kind and name suffix."""

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self if d["kind"] == kind]

    def one(self, kind: str, suffix: str) -> dict:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, f"{kind} *{suffix}: {[d['metadata']['name'] for d in found]}"
        return found[0]

    def settings_yaml(self) -> str:
        return self.one("ConfigMap", "-settings")["data"]["settings.yaml"]


@pytest.fixture(scope="session")
def render(tools, tmp_path_factory):
    """render(*value_files, set=[...], values={...}) -> Rendered; fails on a helm error."""

    def run(*value_files: Path, sets: tuple[str, ...] = (), values: dict | None = None,
            kube_version: str | None = None) -> Rendered:
        args = ["template", "pm", str(CHART), "--namespace", "marketing"]
        for f in value_files:
            args += ["-f", str(f)]
        for s in sets:
            args += ["--set", s]
        if kube_version:
            args += ["--kube-version", kube_version]
        out = helm(tools, *args, values=values, tmp_path=tmp_path_factory.mktemp("values"))
        assert out.returncode == 0, out.stderr
        return Rendered(d for d in yaml.safe_load_all(out.stdout) if d)

    return run


# Each configuration the chart promises to render: defaults, the production file, and the
# optional parts (standalone Spark, a tuning RayJob, chart-made Secrets).
CONFIGS = {
    "default": ((), ()),
    "production": ((PRODUCTION,), ()),
    "standalone-tune-secrets": ((), (
        "spark.mode=standalone", "ray.tune.enabled=true", "ray.tune.family=ctr",
        "spark.initialBuild.enabled=true", "secrets.apiKeys.values={crm:0123456789abcdef}",
        "secrets.piiKeys.value=k1:c2VjcmV0LWtleS1vZi0zMi1ieXRlcy0wMTIzNDU2Nzg5YWI=")),
}


@pytest.fixture(scope="session", params=sorted(CONFIGS))
def rendered(request, render) -> Rendered:
    files, sets = CONFIGS[request.param]
    return render(*files, sets=sets)


# --- KubeRay CRD schemas --------------------------------------------------------------------

def _strict(node: Any) -> Any:
    """An OpenAPI v3 CRD schema as JSON Schema that rejects unknown fields (the API server would
    prune them silently: a misspelt field is lost, not refused)."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def _crd_validator(crd_dir: str, kind: str, api_version: str):
    import jsonschema

    group, _, version = api_version.partition("/")
    for path in Path(crd_dir).glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        names = crd["spec"]["names"]
        if crd["spec"]["group"] == group and names["kind"] == kind:
            for v in crd["spec"]["versions"]:
                if v["name"] == version:
                    schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
                    schema = _strict(schema)
                    schema["properties"]["metadata"] = {"type": "object"}
                    return jsonschema.Draft7Validator(schema)
    raise LookupError(f"no CRD for {api_version} {kind} in {crd_dir}")


def crd_errors(tools: Tools, doc: dict) -> list[str]:
    """Validation errors of a custom resource against its CRD (empty when valid)."""
    validator = _crd_validator(str(tools.crds), doc["kind"], doc["apiVersion"])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def kube_errors(doc: dict) -> list[str]:
    """Errors of a built-in resource against the Kubernetes schemas, strict, at every version."""
    import kubernetes_validate

    errors = []
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{version}: {'/'.join(map(str, exc.path))}: {exc.message}")
    return errors
