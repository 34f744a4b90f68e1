from pathlib import Path

import pytest

from cluster.core.errors import ConfigError
from cluster.core.settings import load_settings


def test_embedded_default_resolves_paths_against_home(tmp_path):
    s = load_settings(env={"PMKT_HOME": str(tmp_path)})
    assert s.profile == "embedded"
    assert s.lake.backend == "local"
    assert s.lake.root == (tmp_path / "var" / "lake").resolve()
    assert s.profile_store.sqlite_path.is_absolute()
    assert s.spark.master == "local[2]"
    assert (s.serve.http_host, s.serve.http_port, s.serve.grpc_port) == ("127.0.0.1", 8000, 9000)


def test_env_override_is_typed():
    s = load_settings(env={"PMKT_SERVE__GRPC_PORT": "9100", "PMKT_SERVE__AUTOSCALING__MAX_REPLICAS": "3"})
    assert s.serve.grpc_port == 9100 and isinstance(s.serve.grpc_port, int)
    assert s.serve.autoscaling.max_replicas == 3


def test_invalid_field_names_file_and_field():
    with pytest.raises(ConfigError) as err:
        load_settings(env={"PMKT_SERVE__GRPC_PORT": "not-a-port"})
    assert err.value.field == "serve.grpc_port"
    assert "embedded.yaml" in err.value.message and "serve.grpc_port" in err.value.message


def test_unknown_key_is_rejected(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("profile: custom\nserve:\n  grpc_prot: 9000\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path=f, env={})
    assert "serve.grpc_prot" in err.value.message and str(f) in err.value.message


def test_missing_variable_without_default_fails(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("profile: custom\nlake:\n  root: ${NOT_SET_ANYWHERE}/lake\n")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        load_settings(path=f, env={})


def test_cluster_profile_takes_endpoints_from_environment():
    s = load_settings("cluster", env={"PMKT_HBASE_THRIFT_HOST": "10.9.9.9", "PMKT_HBASE_THRIFT_PORT": "19090"})
    assert s.profile_store.backend == "hbase"
    assert s.profile_store.hbase.host == "10.9.9.9" and s.profile_store.hbase.port == 19090
    assert s.lake.hdfs.replication == 2


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="embedded"):
        load_settings("nope", env={})


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(path=tmp_path / "absent.yaml", env={})


def test_inconsistent_bounds_rejected(tmp_path):
    with pytest.raises(ConfigError, match="k_max"):
        load_settings(env={"PMKT_SEGMENTS__K_MIN": "5", "PMKT_SEGMENTS__K_MAX": "3"})


def test_bad_time_zone_rejected():
    with pytest.raises(ConfigError, match="time zone"):
        load_settings(env={"PMKT_INGEST__SOURCE_TIMEZONE": "Mars/Olympus"})


def test_no_literal_endpoints_outside_settings():
    """Hosts and ports live in the settings profiles only (house style)."""
    import re

    root = Path(__file__).resolve().parents[4]
    pattern = re.compile(r"""["'](?:127\.0\.0\.\d+|localhost)(?::\d+)?["']|:(?:8000|9000|7077|9090|8020)\b""")
    offenders = []
    for folder in ("cluster", "spark_jobs", "ray_apps"):
        for py in (root / folder).rglob("*.py"):
            for no, line in enumerate(py.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line) and "settings" not in py.name:
                    offenders.append(f"{py.relative_to(root)}:{no}: {line.strip()}")
    assert offenders == []


def test_spark_conf_values_stay_text():
    s = load_settings(env={"PMKT_SPARK__CONF__spark.sql.adaptive.enabled": "true",
                           "PMKT_SPARK__CONF__spark.default.parallelism": "4"})
    assert s.spark.conf == {"spark.sql.adaptive.enabled": "true", "spark.default.parallelism": "4"}
