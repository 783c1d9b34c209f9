"""deploy/compose: the compose file's structure (no engine runs here to start it, and its third-party images come
from a registry this machine cannot reach), the configs it mounts validated by wgprobe's own config models, its
mosquitto.conf kept in step with the production one, and its Prometheus config accepted by the real promtool."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.agent import STOP_GRACE
from probe.agent_config import AgentConfig
from probe.aggregator.config import AggregatorConfig
from tests.unit.prometheus_server import promtool

REPO = Path(__file__).resolve().parents[2]
DIR = REPO / "deploy" / "compose"
WGPROBE = ("aggregator", "agent")
# Where the compose file's paths point inside the eclipse-mosquitto image, and where production keeps them.
MOSQUITTO_PATHS = {
    "/mosquitto/config/pki/": "/etc/mosquitto/wgprobe/",
    "/mosquitto/config/acl": "/etc/mosquitto/wgprobe/acl",
    "/mosquitto/data/": "/var/lib/mosquitto/",
}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DIR / "compose.yaml").read_text())
    return loaded


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    return [(spec.split(":")[0], spec.split(":")[1]) for spec in service.get("volumes", [])]


def settings(conf: str) -> list[str]:
    return [line.strip() for line in conf.splitlines() if line.strip() and not line.startswith("#")]


def test_the_four_services() -> None:
    assert set(services()) == {"mosquitto", "aggregator", "agent", "prometheus"}
    for name, service in services().items():
        for dependency in service.get("depends_on", []):
            assert dependency in services(), (name, dependency)
        assert service["restart"] == "unless-stopped"


def test_agent_and_aggregator_run_the_repositorys_image_unprivileged() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    user = re.search(r"(?m)^USER (\S+)$", dockerfile)
    assert user
    images = set()
    for name in WGPROBE:
        service = services()[name]
        images.add(service["image"])
        assert (DIR / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == REPO / "Dockerfile"
        assert service["command"][0] == name and service["command"][1:3] == ["--config", f"/etc/wgprobe/{name}.toml"]
        assert service["user"] == user[1]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert service["security_opt"] == ["no-new-privileges:true"]
    assert len(images) == 1  # one image for both
    agent = services()["agent"]
    assert agent["stop_signal"] == "SIGTERM"
    assert int(agent["stop_grace_period"].removesuffix("s")) > STOP_GRACE + 10


def test_third_party_images_are_pinned() -> None:
    for name in ("mosquitto", "prometheus"):
        image = services()[name]["image"]
        assert re.fullmatch(r"docker\.io/[\w./-]+:v?\d+\.\d+\.\d+", image), image


def test_mounted_files_exist_and_volumes_are_declared() -> None:
    declared = set(compose()["volumes"])
    for name, service in services().items():
        for source, _target in mounts(service):
            if source.startswith("."):
                if source.startswith("./secrets/"):
                    continue  # made by the operator (new-agent.sh, keys): never in the repository
                assert (DIR / source).exists(), (name, source)
            else:
                assert source in declared, (name, source)


def test_only_the_broker_listens_beyond_loopback() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:") or (name, port) == ("mosquitto", "8883:8883"), (name, port)


def container_config(name: str) -> dict[str, Any]:
    target = f"/etc/wgprobe/{name}.toml"
    source = next(s for s, t in mounts(services()[name]) if t == target)
    loaded: dict[str, Any] = tomllib.loads((DIR / source).read_text())
    return loaded


@pytest.mark.parametrize(("name", "model"), [("agent", AgentConfig), ("aggregator", AggregatorConfig)])
def test_the_mounted_configs_are_valid_wgprobe_configs(name: str, model: type[Any]) -> None:
    config = model.model_validate(container_config(name), context={"base_dir": Path("/etc/wgprobe")})
    assert config.mqtt.url.host == "mosquitto" and config.mqtt.url.port == 8883 and config.mqtt.url.tls
    assert config.mqtt.password_file.parent == Path("/etc/wgprobe/secrets")  # the read-only secrets mount
    assert str(config.http.listen.host) == "0.0.0.0"  # inside the container's own network


def test_the_agent_writes_only_to_its_state_volume() -> None:
    config = AgentConfig.model_validate(container_config("agent"), context={"base_dir": Path("/etc/wgprobe")})
    state = next(t for s, t in mounts(services()["agent"]) if s == "agent-state")
    assert config.spool.path.is_relative_to(state) and config.probe.evidence_dir.is_relative_to(state)


def test_the_compose_broker_config_is_the_production_one() -> None:
    compose_conf = (DIR / "mosquitto.conf").read_text()
    for inside, production in MOSQUITTO_PATHS.items():
        compose_conf = compose_conf.replace(inside, production)
    production_conf = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    assert settings(compose_conf) == settings(production_conf)
    targets = {t for _s, t in mounts(services()["mosquitto"])}
    assert {"/mosquitto/config/mosquitto.conf", "/mosquitto/config/acl", "/mosquitto/config/pki"} <= targets


def test_prometheus_in_compose_scrapes_the_services(tmp_path: Path) -> None:
    shutil.copy(DIR / "prometheus.yml", tmp_path)
    shutil.copy(REPO / "deploy" / "prometheus" / "wgprobe-alerts.yml", tmp_path)
    done = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    inside = {job["job_name"]: job for job in yaml.safe_load((DIR / "prometheus.yml").read_text())["scrape_configs"]}
    production = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    assert set(inside) == {job["job_name"] for job in production}
    probe_job = next(job for job in production if job["job_name"] == "wgprobe-probe")
    assert inside["wgprobe-probe"]["relabel_configs"] == probe_job["relabel_configs"]
    agent_port = container_config("agent")["http"]["listen"].rsplit(":", 1)[1]
    aggregator_port = container_config("aggregator")["http"]["listen"].rsplit(":", 1)[1]
    assert inside["wgprobe-agent"]["static_configs"][0]["targets"] == [f"agent:{agent_port}"]
    assert inside["wgprobe-aggregator"]["static_configs"][0]["targets"] == [f"aggregator:{aggregator_port}"]
    rules_mount = {t for _s, t in mounts(services()["prometheus"])}
    assert "/etc/prometheus/wgprobe-alerts.yml" in rules_mount
