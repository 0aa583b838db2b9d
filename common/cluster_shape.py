"""What a Ray cluster can become, not only what it is now: the decisions that depend on the cluster
(whether local paths reach every worker, whether a request can ever be placed, how many trials fit)
are taken from its possible shape.

A cluster that `ray up cluster.yaml` starts is, at submit time, one head node with `CPU: 0`; its worker
types sit at `min_workers: 0` and Ray's autoscaler adds nodes only when a task or placement group asks.
Read from the nodes alive at that moment, such a cluster looks like one node that can run nothing.  So
where the autoscaler runs, the shape is its node types at their `max_workers` (and the cluster-wide
`max_workers`), read from the autoscaler's own configuration:
- autoscaler v2 (KubeRay) reports it to the GCS (`ClusterConfig`, what Ray Train itself reads);
- the classic autoscaler (`ray up`, and Ray's fake node provider in the tests) runs as the head's
  `monitor.py --autoscaling-config=FILE`: a zero-CPU task on the head node reads FILE.
Without an autoscaler the shape is the nodes alive (a fixed cluster), and before a local Ray starts it
is this machine.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

EPSILON = 1e-6  # resource amounts are floats (0.001 tokens, fractional CPUs)
UNBOUNDED = 10**6  # a node type without a limit on its count


class RequestDoesNotFit(ValueError):
    """A request no node of the cluster's shape can ever hold; its message names the request and the largest node."""


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    max_count: int  # how many nodes of this type the cluster can have

    def holds(self, bundle: dict[str, float]) -> int:
        """How many copies of `bundle` one node of this type holds."""
        counts = [math.floor(self.resources.get(k, 0) / v + EPSILON) for k, v in bundle.items() if v > 0]
        return min(counts) if counts else UNBOUNDED


@dataclass(frozen=True)
class ClusterShape:
    node_types: tuple[NodeType, ...]
    where: str  # in messages: "this machine", "this Ray cluster", "this Ray cluster at its autoscaler's max_workers"
    autoscaling: bool = False  # then node_types[0] is the head
    max_worker_nodes: int = UNBOUNDED  # the autoscaler's cluster-wide max_workers (the head not counted)

    @property
    def max_nodes(self) -> int:
        counts = [t.max_count for t in self.node_types]
        if not self.autoscaling:
            return sum(counts)
        return 1 + min(self.max_worker_nodes, sum(counts) - 1)  # the head, and what the autoscaler may add

    def capacity(self, bundle: dict[str, float]) -> int:
        """The most copies of `bundle` the cluster can hold at once, at its largest."""
        if not self.autoscaling:
            return sum(t.holds(bundle) * t.max_count for t in self.node_types)
        head, workers = self.node_types[0], sorted(self.node_types[1:], key=lambda t: -t.holds(bundle))
        total, nodes_left = head.holds(bundle), self.max_worker_nodes
        for t in workers:  # the worker nodes the autoscaler may start, the best-fitting types first
            n = min(t.max_count, nodes_left)
            total, nodes_left = total + n * t.holds(bundle), nodes_left - n
        return total

    def largest(self, bundle: dict[str, float]) -> NodeType:
        """The node type that holds most of `bundle` (by its scarcest resource), for messages."""
        def score(t: NodeType) -> tuple:
            return (t.holds(bundle), *(t.resources.get(k, 0) for k in bundle))
        return max(self.node_types, key=score)

    def check_fits(self, what: str, bundle: dict[str, float], count: int = 1) -> None:
        """RequestDoesNotFit unless `count` copies of `bundle` can be placed on this shape."""
        have = self.capacity(bundle)
        if have >= count:
            return
        big = self.largest(bundle)
        many = f"{count} x " if count > 1 else ""
        raise RequestDoesNotFit(f"{what} asks for {many}{resource_text(bundle)}, and {self.where} can hold "
                                f"{have} at most (the largest node, {big.name}, has {resource_text(big.resources)})")


def resource_text(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in sorted(resources.items()) if v and not k.startswith("node:")
             and k not in ("memory", "object_store_memory")}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in shown.items()) + "}"


def this_machine() -> ClusterShape:
    """The local Ray a tool would start here: this machine's CPUs and GPUs."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return ClusterShape((NodeType("this machine", {"CPU": cpus, "GPU": torch.cuda.device_count()}, 1),),
                        "this machine")


class ClusterNotRunning(ConnectionError):
    """The cluster `ray.init()` here would join does not answer: Ray would retry its GCS for ever."""


def cluster_address() -> str | None:
    """The cluster `ray.init()` here would join (RAY_ADDRESS, or the last `ray start` on this machine, which
    Ray records in a file of its temp folder), or None where it would start a local Ray.  A cluster that
    no longer answers (killed, or its machine rebooted without `ray stop`) is refused here, before any
    work, with what to do: Ray itself would wait for it without end."""
    import socket

    from ray._common.utils import get_ray_address_file
    from ray._private.services import canonicalize_bootstrap_address

    address = canonicalize_bootstrap_address(None)
    if address is None:
        return None
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        return address
    except OSError:
        pass
    given = os.environ.get("RAY_ADDRESS")
    if given and given != "auto":
        raise ClusterNotRunning(f"RAY_ADDRESS={given}: no Ray cluster answers at {address}: start it, or unset "
                                f"RAY_ADDRESS to run on a local Ray")
    raise ClusterNotRunning(f"the last `ray start` on this machine ({address}, recorded in "
                            f"{get_ray_address_file(None)}) is not running: start it again, or delete that file "
                            f"(or set RAY_ADDRESS=local) to run on a local Ray")


def joins_a_cluster() -> bool:
    """Whether `ray.init()` here would join a running cluster rather than start a local Ray (a recorded
    cluster that does not answer: ClusterNotRunning)."""
    return cluster_address() is not None


def of_cluster() -> ClusterShape:
    """The connected cluster's shape: the autoscaler's node types where one runs, else the nodes alive."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    head = next((n for n in alive if "node:__internal_head__" in n["Resources"]), alive[0])
    config = _autoscaler_node_types(head)
    if config is not None:
        types, max_workers = config
        return ClusterShape((NodeType("head", dict(head["Resources"]), 1), *types),  # the head first
                            "this Ray cluster at its autoscaler's max_workers", autoscaling=True,
                            max_worker_nodes=max_workers)
    nodes = tuple(NodeType(f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})", dict(n["Resources"]), 1) for n in alive)
    return ClusterShape(nodes, "this machine" if len(nodes) == 1 and _is_this_machine(head) else "this Ray cluster")


def _is_this_machine(node: dict) -> bool:
    import ray

    return node["NodeID"] == ray.get_runtime_context().get_node_id()


def _autoscaler_node_types(head: dict) -> tuple[list[NodeType], int] | None:
    """(worker node types, cluster-wide max_workers) of the autoscaler, or None where none runs."""
    import ray

    reported = ray._private.state.state.get_cluster_config()
    if reported is not None and reported.node_group_configs:
        return node_types_from_cluster_config(reported)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    read = ray.remote(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(head["NodeID"], soft=False))
    config = ray.get(read(autoscaling_config_on_this_node).remote(port))
    return None if config is None else node_types_from_autoscaling_config(config)


def node_types_from_cluster_config(config) -> tuple[list[NodeType], int]:
    """From autoscaler v2's `autoscaler_pb2.ClusterConfig`: max_count -1 means unbounded."""
    types = [NodeType(g.name, dict(g.resources), UNBOUNDED if g.max_count < 0 else g.max_count)
             for g in config.node_group_configs]
    return [t for t in types if t.max_count > 0], UNBOUNDED


def node_types_from_autoscaling_config(config: dict) -> tuple[list[NodeType], int]:
    """From a cluster launcher config (cluster.yaml as the autoscaler holds it): the worker types, each at
    its max_workers (the cluster-wide max_workers where a type gives none)."""
    limit = int(config.get("max_workers", UNBOUNDED))
    head_type = config.get("head_node_type")
    types = [NodeType(name, {k: float(v) for k, v in (spec.get("resources") or {}).items()},
                      int(spec.get("max_workers", limit)))
             for name, spec in (config.get("available_node_types") or {}).items() if name != head_type]
    return [t for t in types if t.max_count > 0], limit


def autoscaling_config_on_this_node(gcs_port: str) -> dict | None:
    """Runs on the head node: the config file of the autoscaler (`monitor.py --autoscaling-config=FILE`)
    serving the GCS on `gcs_port`, parsed; None when no autoscaler runs there."""
    import yaml

    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except OSError:  # gone, or not ours to read
            continue
        if not any(a.endswith(("autoscaler/_private/monitor.py", "autoscaler/v2/monitor.py")) for a in argv):
            continue
        values = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
        if values.get("gcs-address", "").rsplit(":", 1)[-1] != gcs_port or not values.get("autoscaling-config"):
            continue
        with open(os.path.expanduser(values["autoscaling-config"])) as f:
            return yaml.safe_load(f)
    return None
