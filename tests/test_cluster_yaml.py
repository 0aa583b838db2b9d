"""cluster.yaml passes Ray's own validator, and the validator really checks it."""

import copy
import os

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster.yaml")


@pytest.fixture()
def config():
    with open(PATH) as f:
        return yaml.safe_load(f)


def test_cluster_yaml_is_valid(config):
    validate_config(prepare_config(copy.deepcopy(config)))


def test_a_typo_in_a_key_is_rejected(config):
    config["available_node_types"]["gpu_8x"]["max_worker"] = 4
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(config))


def test_head_runs_no_tasks_and_auth_and_dashboard_stay_private(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert start.count("RAY_AUTH_MODE=token") == 2 and "--dashboard-host=127.0.0.1" in start
    setup = " ".join(config["setup_commands"])
    assert "ray[default,data,train,tune]==2.60.0" in setup and "torch==2.14.0" in setup


def test_node_roles_offer_what_ray_data_ingest_takes(config):
    """data.ingest_resource=ingest_cpu: data nodes give every CPU to decoding, GPU nodes 8 per GPU."""
    types = config["available_node_types"]
    gpu, data = types["gpu_8x"]["resources"], types["cpu_32"]["resources"]
    assert gpu == {"gpu_node": 1, "ingest_cpu": 64} and data == {"data_node": 1, "ingest_cpu": 32}
