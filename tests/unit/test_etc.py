"""The files in ``etc/`` work as shipped: every config file through the real loader from
the checkout (no warning, the master's job directory exists and holds the sample job),
the master's TOML and JSON say the same, and the systemd unit passes
``systemd-analyze verify``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from ate.checks import check_handler, check_master, check_sim, job_directory_problem
from ate.config import load_handler_config, load_master_config, load_sim_config
from ate.jobs.source import job_source_from_config

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ETC = os.path.join(ROOT, "etc")

#: every file in etc/ and what reads it
KINDS = {
    "master.toml": "master", "master.json": "master",
    "handler.toml": "handler", "handler-tcp.toml": "handler",
    "sim-sites.toml": "sim",
    "ate-master.service": "systemd", "mosquitto-ate.conf": "mosquitto",
    # promtool and tests/integration/test_prometheus_rules.py
    "prometheus": "prometheus", "grafana": "grafana",
    # run by tests/integration/test_floor_bridge.py
    "mosquitto-floor.conf": "mosquitto", "mosquitto-tester-bridge.conf": "mosquitto",
}
LOADERS = {"master": load_master_config, "handler": load_handler_config,
           "sim": load_sim_config}


def test_every_file_in_etc_is_known():
    assert sorted(os.listdir(ETC)) == sorted(KINDS)


@pytest.fixture
def in_checkout(monkeypatch):
    """Relative paths of the configs are relative to the working directory: the checkout."""
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("name", sorted(n for n, k in KINDS.items() if k in LOADERS))
def test_config_loads_without_warning(name, in_checkout):
    cfg = LOADERS[KINDS[name]](os.path.join("etc", name))
    assert cfg.warnings == ()


@pytest.mark.parametrize("name", ["master.toml", "master.json"])
def test_master_config_finds_and_verifies_the_sample_job(name, in_checkout):
    cfg = load_master_config(os.path.join("etc", name))
    assert job_directory_problem(cfg) is None
    job = job_source_from_config(cfg).load("306426.001")
    assert os.path.samefile(job.path, os.path.join(ROOT, "jobs", "le306426001.xml"))
    assert job.lot_number == "306426.001"
    report = check_master(cfg)
    assert report.exit_code == 0 and report.errors == []
    assert "le306426001.xml" in dict(report.items)["jobs"]


def test_master_toml_and_json_are_the_same_configuration(in_checkout):
    toml = load_master_config("etc/master.toml")
    json_ = load_master_config("etc/master.json")
    fields = [f for f in toml.__dataclass_fields__ if f != "path"]
    assert {f: getattr(toml, f) for f in fields} == {f: getattr(json_, f) for f in fields}


def test_the_sample_job_is_the_demo_job():
    """jobs/ holds the same job as ate/demodata (only the leading comment differs)."""
    def body(path):
        with open(path, encoding="utf-8") as f:
            return re.sub(r"<!--.*?-->", "", f.read(), count=1, flags=re.S)

    assert body(os.path.join(ROOT, "jobs", "le306426001.xml")) == body(
        os.path.join(ROOT, "ate", "demodata", "le306426001.xml"))


def test_master_config_from_elsewhere_names_the_missing_job_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_master_config(os.path.join(ETC, "master.toml"))
    problem = job_directory_problem(cfg)
    assert problem == (f"{ETC}/master.toml: filesystemdatasource_path: job directory './jobs' "
                       f"does not exist (relative to the working directory {tmp_path})")
    report = check_master(cfg)
    assert report.exit_code == 2 and report.errors == [problem]


@pytest.mark.parametrize("name", ["handler.toml", "handler-tcp.toml"])
def test_handler_configs_name_their_device(name, in_checkout):
    cfg = load_handler_config(os.path.join("etc", name))
    report = check_handler(cfg)
    assert report.exit_code == 0
    device = dict(report.items)["device"]
    if name == "handler.toml":
        assert cfg.serial_port == "/dev/ttyUSB0" and cfg.serial is None and cfg.listen is None
    else:
        assert device == "connects to tcp:127.0.0.1:5000"


def test_sim_config_matches_the_master_config(in_checkout):
    sim = load_sim_config("etc/sim-sites.toml")
    master = load_master_config("etc/master.toml")
    assert (sim.device_id, sim.sites) == (master.device_id, master.sites)
    assert check_sim(sim).exit_code == 0
    for name in ("handler.toml", "handler-tcp.toml"):
        handler = load_handler_config(os.path.join("etc", name))
        assert handler.device_ids == (master.device_id,)
        assert handler.handler_id == master.handler_id


def systemd_root(tmp_path) -> str:
    """A file system root with the system's own units, for ``systemd-analyze --root``."""
    root = tmp_path / "root"
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system",
                    symlinks=True)
    return str(root)


def unit_values(key: str) -> list[str]:
    with open(os.path.join(ETC, "ate-master.service"), encoding="utf-8") as f:
        return [line.split("=", 1)[1].strip() for line in f
                if line.startswith(f"{key}=")]


def test_systemd_unit_creates_what_it_needs():
    (exec_start,) = unit_values("ExecStart")
    assert exec_start.split()[0] == "/opt/ate-master/venv/bin/twistd"
    assert "--config /etc/ate-master/master.toml" in exec_start
    assert unit_values("DynamicUser") == ["yes"]
    assert unit_values("WorkingDirectory") == ["/var/lib/ate-master"]
    state = unit_values("StateDirectory")[0].split()
    # the relative directories of etc/master.toml exist below the working directory
    cfg = load_master_config(os.path.join(ETC, "master.toml"))
    for path in (cfg.filesystemdatasource_path, cfg.stdf_directory, cfg.log_directory):
        assert "ate-master/" + os.path.normpath(path) in state, path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed on this machine")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    root = systemd_root(tmp_path)
    unit_dir = os.path.join(root, "etc", "systemd", "system")
    os.makedirs(unit_dir)
    shutil.copy(os.path.join(ETC, "ate-master.service"), unit_dir)
    twistd = os.path.join(root, "opt", "ate-master", "venv", "bin", "twistd")
    os.makedirs(os.path.dirname(twistd))
    with open(twistd, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(twistd, 0o755)
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "ate-master.service"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == "", proc.stderr
    # and it does find problems: a misspelt key, a missing program
    with open(os.path.join(unit_dir, "ate-master.service"), "a") as f:
        f.write("StateDirectry=x\n")
    os.remove(twistd)
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "ate-master.service"],
                          capture_output=True, text=True, timeout=60)
    assert "Unknown key 'StateDirectry'" in proc.stderr
    assert "is not executable" in proc.stderr and proc.returncode != 0
