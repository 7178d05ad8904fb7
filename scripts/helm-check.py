#!/usr/bin/env python3
"""Lints and renders helm/shcr and validates every rendered manifest against the Kubernetes
schemas, offline: Helm's own Go library (PyPI helm-python-sdk) and kubernetes-validate's bundled
OpenAPI schemas. Run by scripts/helm-check.sh, which installs both; exits non-zero on any problem.

Value sets checked: the chart's defaults, values-production.yaml and every ci/*-values.yaml.
Besides schema validity it checks the properties the chart promises operators (non-root,
read-only root filesystem, probes, the migration hook, no inlined Secrets, every data file
shipped), since a schema-valid chart can still lose one of them in an edit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "shcr"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the schemas know.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]

# Kinds outside the core API. Their CRD schemas do not ship with kubernetes-validate, so the
# fields the chart uses are checked against this subset of the Prometheus Operator's CRD.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object"},
                "namespaceSelector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                            "authorization": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["credentials"],
                                "properties": {
                                    "type": {"type": "string"},
                                    "credentials": {
                                        "type": "object",
                                        "required": ["name", "key"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "name": {"type": "string", "minLength": 1},
                                            "key": {"type": "string", "minLength": 1},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["alert", "expr"],
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

CUSTOM_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA, "PrometheusRule": PROMETHEUS_RULE_SCHEMA}

problems: list[str] = []


def problem(where: str, message: str) -> None:
    problems.append(f"{where}: {message}")
    print(f"  FAIL {where}: {message}")


def value_sets() -> list[tuple[str, dict]]:
    sets = [("defaults", {})]
    sets.append(("values-production.yaml", yaml.safe_load((CHART / "values-production.yaml").read_text())))
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        sets.append((f"ci/{path.name}", yaml.safe_load(path.read_text()) or {}))
    return sets


def lint(name: str, values: dict) -> None:
    report = helm.lint(str(CHART), values, strict=True, namespace="shcr", kube_version="v1.30.0")
    for message in report.get("messages", []):
        # 1 = info (e.g. "icon is recommended"); warnings and errors fail.
        if message["severity"] >= 2:
            problem(f"lint {name}", f"{message['path']}: {message['error']}")
    for error in report.get("errors", []):
        problem(f"lint {name}", error)


def render(values: dict, **options) -> list[tuple[str, dict]]:
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="shcr", namespace="shcr", is_install=True, **options)
    documents = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                documents.append((template, document))
    return documents


def validate(name: str, template: str, document: dict) -> None:
    where = f"{name} {template} {document.get('kind')}/{document.get('metadata', {}).get('name')}"
    if document.get("kind") in CUSTOM_SCHEMAS:
        import jsonschema

        try:
            jsonschema.validate(document, CUSTOM_SCHEMAS[document["kind"]])
        except jsonschema.ValidationError as e:
            problem(where, f"{'.'.join(map(str, e.path))}: {e.message}")
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problem(where, f"Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problem(where, f"no schema: {e.message}")


def pod_spec(document: dict) -> dict | None:
    spec = document.get("spec", {})
    if document["kind"] in ("StatefulSet", "Deployment", "Job"):
        return spec["template"]["spec"]
    return None


def check_promises(name: str, documents: list[tuple[str, dict]], values: dict) -> None:
    kinds = [d["kind"] for _, d in documents]
    for template, document in documents:
        where = f"{name} {document['kind']}/{document['metadata']['name']}"
        if document["kind"] == "Secret":
            problem(where, "the chart must reference Secrets, never create them")
        pod = pod_spec(document)
        if pod is None:
            continue
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            problem(where, "pod must run as non-root")
        writable = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        for container in pod["containers"]:
            context = container.get("securityContext", {})
            if context.get("readOnlyRootFilesystem") is not True:
                problem(where, f"container {container['name']}: root filesystem must be read-only")
            if context.get("allowPrivilegeEscalation") is not False:
                problem(where, f"container {container['name']}: privilege escalation must be off")
            if not container.get("resources", {}).get("limits"):
                problem(where, f"container {container['name']}: resource limits missing")
            if "/tmp" not in writable:
                problem(where, f"container {container['name']}: /tmp must be a writable volume")
            for env in container.get("env", []):
                lowered = env["name"].lower()
                if any(s in lowered for s in ("password", "secret", "token", "database_url")) and "value" in env:
                    problem(where, f"env {env['name']} must come from a Secret, not a literal")
        if document["kind"] == "Job":
            hooks = document["metadata"].get("annotations", {}).get("helm.sh/hook", "")
            if "pre-install" not in hooks or "pre-upgrade" not in hooks:
                problem(where, "the migration job must be a pre-install,pre-upgrade hook")
            if pod["containers"][0].get("args") != ["migrate"]:
                problem(where, "the migration job must run `shcr migrate`")
            continue
        server = pod["containers"][0]
        if server.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
            problem(where, "liveness must probe /healthz")
        if server.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            problem(where, "readiness must probe /readyz")
        if "/var/lib/shcr" not in writable:
            problem(where, "the index volume must be mounted at /var/lib/shcr")
        persistent = document["kind"] == "StatefulSet"
        claims = [t["metadata"]["name"] for t in document["spec"].get("volumeClaimTemplates", [])]
        if persistent and "index" not in claims:
            problem(where, "a StatefulSet needs an index volume claim per pod")
        if not persistent and not any(v["name"] == "index" and "emptyDir" in v for v in pod["volumes"]):
            problem(where, "a Deployment needs an emptyDir index volume")
    for required in ("Service", "ConfigMap"):
        if required not in kinds:
            problem(name, f"no {required} rendered")
    if not any(k in kinds for k in ("StatefulSet", "Deployment")):
        problem(name, "no workload rendered")

    # Every data file (but READMEs and those the binary embeds) is in its ConfigMap.
    merged_data = {
        "search-params": (values.get("dataFiles", {}).get("searchParams", {}).get("embedded"), "search-params"),
        "consent-policies": (values.get("dataFiles", {}).get("consentPolicies", {}).get("embedded"), "consent-policies"),
    }
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["dataFiles"]
    for folder, (embedded, suffix) in merged_data.items():
        if embedded is None:
            key = "searchParams" if folder == "search-params" else "consentPolicies"
            embedded = defaults[key]["embedded"]
        expected = {
            p.name
            for p in (REPO / folder).iterdir()
            if p.is_file() and not p.name.startswith("README") and p.name not in embedded
        }
        maps = [d for _, d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith(suffix)]
        if len(maps) != 1:
            problem(name, f"expected one ConfigMap for {folder}, found {len(maps)}")
            continue
        shipped = set((maps[0].get("data") or {}).keys())
        if shipped != expected:
            problem(name, f"{folder} ConfigMap holds {sorted(shipped)}, the folder has {sorted(expected)}")
        for file in expected & shipped:
            if maps[0]["data"][file] != (REPO / folder / file).read_text():
                problem(name, f"{folder}/{file} differs in its ConfigMap")


def expect_render_failure(name: str, values: dict, mentions: str) -> None:
    try:
        render(values)
    except helm.HelmError as e:
        if mentions not in str(e):
            problem(name, f"render failed, but without mentioning '{mentions}': {e}")
        else:
            print(f"  ok   {name}: refused ({mentions})")
        return
    problem(name, "rendered, but should have been refused")


def exported_metrics() -> set[str]:
    """Names of the metrics shcr exports: each `pub static NAME: LazyLock<…>` metric in src/ whose
    static is used somewhere (a static never touched is never registered, so its metric never
    appears at /metrics), plus the process collector's."""
    import re

    sources = {p: p.read_text() for p in (REPO / "src").rglob("*.rs")}
    everything = "\n".join(sources.values())
    exported = {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    definition = re.compile(r"pub static ([A-Z0-9_]+): LazyLock<[^=]+= LazyLock::new\(\|\| \{(.*?)\n\}\);", re.S)
    for text in sources.values():
        for static, body in definition.findall(text):
            names = re.findall(r'"([a-z][a-z0-9_]*)"', body)
            if not names or len(re.findall(rf"\b{static}\b", everything)) < 2:
                continue
            exported.add(names[0])
    return exported


def unexported(expr: str, exported: set[str]) -> list[str]:
    """The shcr_* metrics `expr` asks for that shcr does not export."""
    import re

    missing = []
    for metric in re.findall(r"\bshcr_([a-z0-9_]+)", expr):
        base = re.sub(r"_(bucket|count|sum)$", "", metric)
        if metric not in exported and base not in exported:
            missing.append(f"shcr_{metric}")
    return missing


def check_dashboard(exported: set[str]) -> None:
    """The Grafana dashboard parses and asks only for metrics shcr exports."""
    import json

    dashboard = json.loads((CHART / "dashboards" / "shcr-overview.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for metric in unexported(target["expr"], exported):
                problem("dashboard", f"panel '{panel['title']}' uses {metric}, which shcr does not export")
    print(f"  ok   dashboard: {len(dashboard['panels'])} panels, metrics all exported" if not problems else "  ...  dashboard")


def check_alerts(documents: list[tuple[str, dict]], exported: set[str]) -> None:
    """Every alert of the rendered PrometheusRule asks only for metrics shcr exports, and its
    expression's brackets balance (Helm renders what promtool would refuse)."""
    rules = [r for _, d in documents if d["kind"] == "PrometheusRule"
             for g in d["spec"]["groups"] for r in g["rules"]]
    if not rules:
        problem("alerts", "values-production.yaml renders no PrometheusRule")
        return
    for rule in rules:
        expr = rule["expr"]
        for metric in unexported(expr, exported):
            problem("alerts", f"{rule['alert']} uses {metric}, which shcr does not export")
        depth = {"(": 0, "{": 0, "[": 0}
        closing = {")": "(", "}": "{", "]": "["}
        for c in expr:
            if c in depth:
                depth[c] += 1
            elif c in closing:
                depth[closing[c]] -= 1
        if any(depth.values()):
            problem("alerts", f"{rule['alert']}: unbalanced brackets in {expr!r}")
    print(f"  ok   alerts: {len(rules)} rules, metrics all exported" if not problems else "  ...  alerts")


def main() -> int:
    print(f"Helm SDK {helm.helm_sdk_version()}, kubernetes-validate {kubernetes_validate.__version__}, "
          f"schemas for Kubernetes {', '.join(KUBE_VERSIONS)}")
    total = 0
    exported = exported_metrics()
    for name, values in value_sets():
        lint(name, values)
        documents = render(values)
        for template, document in documents:
            validate(name, template, document)
        check_promises(name, documents, values)
        if name == "values-production.yaml":
            check_alerts(documents, exported)
        total += len(documents)
        kinds = sorted({d["kind"] for _, d in documents})
        print(f"  ok   {name}: {len(documents)} manifests ({', '.join(kinds)})" if not problems else
              f"  ...  {name}: {len(documents)} manifests")

    check_dashboard(exported)
    expect_render_failure("no issuer", {"auth": {"issuer": ""}}, "auth.issuer is required")
    expect_render_failure("no database secret", {"database": {"existingSecret": ""}}, "database.existingSecret")
    data_files = [p for d in ("search-params", "consent-policies") for p in (REPO / d).iterdir()
                  if p.is_file() and not p.name.startswith("README")]
    if data_files:
        oversized = {"dataFiles": {"maxFileBytes": 1, "searchParams": {"embedded": []},
                                   "consentPolicies": {"embedded": []}}}
        expect_render_failure("oversized data file", oversized, "more than dataFiles.maxFileBytes")

    if problems:
        print(f"{len(problems)} problem(s) in the chart")
        return 1
    print(f"chart ok: {total} manifests linted, rendered and validated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
