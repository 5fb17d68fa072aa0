"""deploy/kubernetes/: every file parses as YAML, every TIERSTORE_* name it sets is a real setting
(and its value loads), and the layout deploy/README.md describes is the one the files declare."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tierstore.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent / "deploy"
K8S = ROOT / "kubernetes"
PREFIX = "TIERSTORE_"


def _docs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        with path.open() as f:
            out.extend((path.name, d) for d in yaml.safe_load_all(f) if d is not None)
    return out


def _find(kind: str, name: str) -> dict:
    matches = [d for _, d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name, len(matches))
    return matches[0]


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec") or {}
    return (spec.get("template") or {}).get("spec", {}).get("containers", [])


def _tierstore_names() -> dict[str, list[str]]:
    """Every TIERSTORE_* name set anywhere: ConfigMap/Secret keys and container env names -> where."""
    found: dict[str, list[str]] = {}
    for file, doc in _docs():
        where = f"{file}:{doc['kind']}/{doc['metadata']['name']}"
        names = []
        if doc["kind"] in ("ConfigMap", "Secret"):
            names += list(doc.get("data") or {}) + list(doc.get("stringData") or {})
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            for c in _containers(doc):
                names += [e["name"] for e in c.get("env", [])]
                names += [e.get("valueFrom", {}).get("configMapKeyRef", {}).get("key", "") for e in c.get("env", [])]
        for n in names:
            if n.startswith(PREFIX):
                found.setdefault(n, []).append(where)
    return found


def test_every_file_parses_into_named_kubernetes_objects():
    docs = _docs()
    assert {f for f, _ in docs} == {p.name for p in K8S.glob("*.yaml")}
    assert len(docs) >= 20
    for file, doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), file
        assert doc["metadata"]["name"], file
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "tierstore", (file, doc["metadata"]["name"])


def test_every_tierstore_name_is_a_setting_and_the_values_load():
    found = _tierstore_names()
    assert len(found) >= 15
    unknown = {n: w for n, w in found.items() if n[len(PREFIX):].lower() not in Settings.model_fields}
    assert not unknown, f"not settings (tierstore/settings.py): {unknown}"
    # the values themselves pass the settings' validation (durations, JSON, URLs, literals)
    values = {}
    for _, doc in _docs():
        if doc["kind"] in ("ConfigMap", "Secret"):
            for k, v in {**(doc.get("data") or {}), **(doc.get("stringData") or {})}.items():
                if k.startswith(PREFIX):
                    values[k] = v
    with pytest.MonkeyPatch.context() as mp:
        for k, v in values.items():
            mp.setenv(k, v)
        settings = load_settings()
    assert settings.trino_url == "http://trino:8080"
    assert settings.cold_engine == "trino" and settings.auth_enabled
    assert settings.archive_retention == 7 * 365 * 86_400_000


def test_every_env_reference_points_at_a_declared_config():
    declared = {(d["kind"], d["metadata"]["name"]) for _, d in _docs()}
    for file, doc in _docs():
        for c in _containers(doc):
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef") or src.get("secretRef")
                kind = "ConfigMap" if "configMapRef" in src else "Secret"
                assert (kind, ref["name"]) in declared, (file, ref)


def test_router_probes_and_serve_command():
    router = _find("Deployment", "tierstore-router")
    (c,) = _containers(router)
    assert c["command"][:2] == ["tierstore", "serve"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    service = _find("Service", "tierstore")
    assert service["spec"]["selector"] == router["spec"]["selector"]["matchLabels"]


def test_scheduler_runs_one_active_plus_a_standby():
    scheduler = _find("Deployment", "tierstore-scheduler")
    assert scheduler["spec"]["replicas"] == 2
    (c,) = _containers(scheduler)
    assert c["command"] == ["tierstore", "scheduler"]


def test_redis_cluster_has_six_nodes_and_a_create_job():
    sts = _find("StatefulSet", "redis-cluster")
    assert sts["spec"]["replicas"] == 6
    conf = _find("ConfigMap", "redis-cluster")["data"]["redis.conf"]
    assert "cluster-enabled yes" in conf and "appendonly yes" in conf and "noeviction" in conf
    job = _find("Job", "redis-cluster-create")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert "--cluster create" in c["args"][0] and "--cluster-replicas 1" in c["args"][0]
    assert {e["name"]: e["value"] for e in c["env"]}["NODES"] == str(sts["spec"]["replicas"])


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))


def test_trino_coordinator_schedules_only_and_workers_share_one_catalog():
    coordinator = _properties(_find("ConfigMap", "trino-coordinator")["data"]["config.properties"])
    worker = _properties(_find("ConfigMap", "trino-worker")["data"]["config.properties"])
    assert coordinator["coordinator"] == "true"
    assert coordinator["node-scheduler.include-coordinator"] == "false"
    assert worker["coordinator"] == "false"
    assert worker["discovery.uri"] == coordinator["discovery.uri"] == "http://trino:8080"
    catalog = _properties(_find("ConfigMap", "trino-catalog")["data"]["hive.properties"])
    assert catalog["hive.metastore"] == "thrift" and catalog["hive.metastore.uri"].startswith("thrift://")
    assert catalog["local.location"] == "/var/lib/tierstore/cold"
    for name in ("trino-coordinator", "trino-worker"):
        dep = _find("Deployment", name)
        sources = dep["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
        assert {s["configMap"]["name"] for s in sources} == {name, "trino-catalog"}
        (c,) = _containers(dep)
        assert "/var/lib/tierstore/cold" in {m["mountPath"] for m in c["volumeMounts"]}
    assert _find("Deployment", "trino-coordinator")["spec"]["replicas"] == 1
    # the catalog's keys are those the local services write (tierstore/services/trino.py), metastore aside
    from tierstore.layout import InstanceLayout
    from tierstore.services.trino import TrinoService

    local = TrinoService(InstanceLayout(home=Path("/nonexistent"), port_base=17400), workers=1).catalog_properties()
    metastore = {"hive.metastore", "hive.metastore.catalog.dir", "hive.metastore.uri",
                 "hive.metastore.thrift.client.read-timeout"}
    assert set(catalog) - metastore == set(local) - metastore


def test_cold_volume_is_read_write_many_and_mounted_where_the_settings_say():
    pvc = _find("PersistentVolumeClaim", "tierstore-cold")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    cold_dir = _find("ConfigMap", "tierstore-config")["data"]["TIERSTORE_COLD_DIR"]
    for name in ("tierstore-router", "tierstore-scheduler"):
        (c,) = _containers(_find("Deployment", name))
        assert cold_dir in {m["mountPath"] for m in c["volumeMounts"]}, name


def test_docs_exist_and_name_the_metastore_switch():
    readme = (ROOT / "README.md").read_text()
    for needle in ("hive.metastore", "thrift://", "file metastore", "include-coordinator=false", "/readyz",
                   "advisory lock"):
        assert needle in readme, needle
    sizing = (ROOT / "SIZING.md").read_text()
    for needle in ("500,000", "Sources", "[B1]", "[M1]", "[W1]", "[M4]"):
        assert needle in sizing, needle
    # the volumes the example requests are the ones the arithmetic arrives at
    assert _find("PersistentVolumeClaim", "tierstore-cold")["spec"]["resources"]["requests"]["storage"] == "64Ti"
    assert "64 TiB" in sizing
