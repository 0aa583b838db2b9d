"""Local paths on a cluster of several nodes: refused unless every node mounts them, and then verified.

A local path (`runs`, `/data/shards`) names a different folder on each node.  On a cluster that has, or
through its autoscaler can have, more than one node, the tools' workers would read inputs that are not
there and write outputs (checkpoints, shards) where the driver never looks.  So a local path is refused
there, unless the user says every node mounts it (`run.shared_filesystem`, `shard.py --shared-filesystem`):
then a marker file written here must be read on every node alive now, and every input must be there.
Nodes the autoscaler starts later check the same marker where the work starts (`SharedMarker.check`).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from common.cluster_shape import ClusterShape

MARKER_PREFIX = ".shared-filesystem-check-"


class SharedPathError(ValueError):
    """A local path that would not reach every node; the message names the setting and the fix."""


@dataclass(frozen=True)
class SharedMarker:
    """A file every node must see with this token while the work runs."""

    path: str
    token: str

    @classmethod
    def write(cls, folder: str) -> "SharedMarker":
        os.makedirs(folder, exist_ok=True)
        token = uuid.uuid4().hex
        marker = cls(os.path.join(folder, MARKER_PREFIX + token), token)
        with open(marker.path, "w") as f:
            f.write(token)
        return marker

    def seen_here(self) -> bool:
        try:
            with open(self.path) as f:
                return f.read() == self.token
        except OSError:
            return False

    def check(self, key: str) -> None:
        """On a node where the work starts: a SharedPathError unless it sees the marker."""
        if not self.seen_here():
            import socket

            raise SharedPathError(f"{key}: the shared filesystem is not mounted on node {socket.gethostname()}"
                                  f" (it does not see {self.path}, written by the driver): mount it on every node "
                                  f"the cluster can start, or use s3://...")

    def remove(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


def check_local_paths(shape: ClusterShape, local: list[tuple[str, str]], shared: bool, flag: str,
                      marker_folder: str | None, inputs: list[str]) -> None:
    """`local`: (setting as messages name it, path) of every local path the work uses; `inputs`: files that
    must exist on every node; `marker_folder`: a writable local folder of the work (its output), or None
    where the output is not local (then only the inputs are checked)."""
    if shape.max_nodes < 2 or not local:
        return
    if not shared:
        key, path = local[0]
        has = "can have" if shape.autoscaling else "has"
        raise SharedPathError(f"{key}: {path} is a local path and {shape.where} {has} {_count(shape.max_nodes)} "
                              f"nodes, whose workers would each see their own disk there.  Use s3://... (or another "
                              f"URI every node can reach), or a path every node mounts and {flag}")
    marker = SharedMarker.write(marker_folder) if marker_folder else None
    try:
        _verify_on_nodes_alive(marker, inputs)
    finally:
        if marker:
            marker.remove()


def _count(n: int) -> str:
    return "many" if n >= 10**5 else str(n)


def _verify_on_nodes_alive(marker: SharedMarker | None, inputs: list[str]) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def missing_here() -> str | None:
        if marker and not marker.seen_here():
            return os.path.dirname(marker.path)
        return next((path for path in inputs if not os.path.exists(path)), None)

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    checks = [missing_here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote() for n in nodes]
    for node, check in zip(nodes, checks):
        try:
            missing = ray.get(check)
        except ray.exceptions.TaskUnschedulableError:  # the node went away meanwhile (an idle one the
            continue  # autoscaler removed): no work will run there
        if missing:
            raise SharedPathError(f"the shared filesystem is set, but node {node['NodeManagerAddress']} "
                                  f"({node['NodeID'][:8]}) does not see {missing} as this machine does: mount it on "
                                  f"every node, or use s3://...")
