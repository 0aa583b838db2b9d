"""The console is ours: our progress and result lines by default, Ray's INFO chatter in its session logs.

Ray writes everything to its session logs (`<session>/logs`) whatever the console shows, so quieting the
console loses nothing.  It uses Ray's own switches: `ray.init(logging_level=...)` for the driver's `ray`
logger, Ray Train's `RunConfig(logging_config=LoggingConfig(log_level=...))` for its controller and
workers, and the standard `logging` level of the console handlers Ray attaches to its documented
loggers (`ray.data`, `ray.train`, `ray.tune`, and the root logger of a Train worker); their file handlers
keep every record.  Warnings and errors still reach the console.  `--verbose` leaves all of it as Ray
sets it.

A failure during the work ends the console with one line saying what failed (`report_failure`); the
traceback goes to a file in Ray's session logs, whose path that line gives.

Lines from rank 0 of a Train run reach the driver through a `ConsoleRelay` (a Ray queue), so they print
once, without Ray's `(RayTrainWorker pid=...)` prefix, whether the driver is a shell or `ray job submit`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import re
import sys
import tempfile
import threading
import time
import traceback

QUIET_LEVEL = logging.WARNING
RAY_LIBRARY_LOGGERS = ("ray.data", "ray.train", "ray.tune")
_logs_dir: str | None = None  # the Ray session's log folder, once start_ray has started Ray
_our_node: str | None = None  # the node id of the Ray that start_ray started
GCS_PORT_VARIABLE = "RAY_GCS_SERVER_PORT"  # the port a local Ray's GCS takes (ray._private.ray_constants)
RAY_OWN_WARNINGS = ("ignore:`ExecutionOptions.exclude_resources` is deprecated",)  # PYTHONWARNINGS entries


def add_verbose_flag(parser: argparse.ArgumentParser, ray: bool = True) -> None:
    """`ray`: the tool starts Ray, whose own output --verbose brings back; every tool's --verbose also puts
    a failure's whole traceback on the console (it always goes to the log the error line names)."""
    shown = "Ray's own INFO output (Ray Data's progress log, Train's reports, ...) and " if ray else ""
    parser.add_argument("--verbose", action="store_true", help=f"also show {shown}a failure's whole traceback")


class _NotForTheConsole(logging.Filter):
    """Lines the console does not show (log files keep them), each already shown in another form or not
    about the user's run:
    - a failed Train worker's traceback: Ray logs it from every worker, after the driver's own failure
      line (`report_failure`), which already says what failed and where the traceback is;
    - Ray Data's warning that its progress bars are off, in a pipeline that turned them off because
      rank 0's progress line is the console's (`data.ingest: ray_data`);
    - Ray's notice, on every local start, that token authentication is on (its default; the docs say so);
    - Ray Data's warning that the cluster has no free CPU "and will hang": read while the previous
      split's tasks release theirs, or before an autoscaler adds the first worker, and our own checks
      (`cluster_shape`) already refuse a request no node can hold."""

    DROPPED = ("Error in training function", "Progress bars disabled",
               "Token authentication is enabled for this Ray cluster",
               "Warning: The Ray cluster currently does not have any available CPUs")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.DROPPED)


NOT_FOR_THE_CONSOLE = _NotForTheConsole()
# Lines of Ray's own processes that its log monitor forwards to the driver, and the console drops (the
# worker's log file keeps them): the C++ notice each Train run's PreemptionWatcher actor raises
# (ray-project/ray#53727), which no setting of ours can avoid.
RAY_PROCESS_NOTICES = ("has constructor arguments in the object store and max_restarts > 0",)


def quiet_console_handlers(logger_name: str = "") -> None:
    """Console handlers of `logger_name` (root by default) pass warnings and errors only; file handlers
    keep everything."""
    for handler in logging.getLogger(logger_name).handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(QUIET_LEVEL)
            handler.addFilter(NOT_FOR_THE_CONSOLE)


def _drop_ray_process_notices() -> None:
    """Wraps the handler through which the driver prints what Ray's log monitor forwards from workers and
    actors, so that the lines of RAY_PROCESS_NOTICES are left out (Ray offers no filter of its own)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    def without_notices(printer, batch: dict) -> None:
        lines = [line for line in batch.get("lines", []) if not any(n in line for n in RAY_PROCESS_NOTICES)]
        if lines:
            printer({**batch, "lines": lines})

    for name, printer in list(dispatcher.handlers):
        if name == "ray_print_logs":  # ray.init(log_to_driver=True)'s printer
            dispatcher.remove_handler(name)
            dispatcher.add_handler(name, functools.partial(without_notices, printer))


def train_log_level(verbose: bool) -> str:
    """For Ray Train's `LoggingConfig(log_level=...)`."""
    return "INFO" if verbose else logging.getLevelName(QUIET_LEVEL)


def start_ray(verbose: bool = False) -> None:
    """Join the cluster in RAY_ADDRESS (or the last `ray start` here), or start a local one, with the console
    as this module keeps it; prints where the dashboard and Ray's logs are, once.  A Ray already initialised
    is left as it is.  Every worker and actor of the job gets the cluster's address (RAY_ADDRESS): Ray's own
    actors that call its state API (Train's placement-group cleaner) would otherwise look for the cluster
    among the processes of the machine, and fail with a traceback where it runs a second Ray."""
    import ray

    if not verbose:
        import ray.data  # noqa: F401  (its loggers get their handlers on import)
        import ray.train  # noqa: F401
        for name in ("ray", *RAY_LIBRARY_LOGGERS):
            quiet_console_handlers(name)
    global _logs_dir, _our_node
    if ray.is_initialized():
        if ray.get_runtime_context().get_node_id() != _our_node:  # someone else's: theirs to shut down
            _logs_dir = _our_node = None
        return
    if not verbose:  # the autoscaler's "Adding 2 node(s)" lines: `ray status` and the dashboard show them
        from ray._private import ray_constants

        ray_constants.AUTOSCALER_EVENTS = 0  # what RAY_SCHEDULER_EVENTS=0 sets, read when a driver prints
    address, local_port = _address_to_pin()
    # in a `ray job submit` driver, merged into the job's runtime env (its working_dir kept)
    env_vars = {"RAY_ADDRESS": address, **({} if verbose else {"PYTHONWARNINGS": _quiet_warnings()})}
    with _environment(GCS_PORT_VARIABLE, local_port):  # a local Ray's GCS listens where RAY_ADDRESS says
        context = ray.init(logging_level=logging.INFO if verbose else QUIET_LEVEL, runtime_env={"env_vars": env_vars})
    if not verbose:
        _drop_ray_process_notices()
    dashboard = f"http://{context.dashboard_url}" if context.dashboard_url else "not running"
    _logs_dir, _our_node = f"{context.address_info['session_dir']}/logs", ray.get_runtime_context().get_node_id()
    print(f"Ray dashboard: {dashboard}; Ray's own logs: {_logs_dir}", flush=True)


def _quiet_warnings() -> str:
    """PYTHONWARNINGS for the workers: theirs, less Ray's own deprecation warning that Ray Train's run
    tracking (the dashboard's Train page) raises in every run, which no setting of ours can avoid."""
    return ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), *RAY_OWN_WARNINGS]))


def _address_to_pin() -> tuple[str, int | None]:
    """(the address ray.init() will join, None), or for a local start (an address on a free port, the port)."""
    import socket

    from ray.util import get_node_ip_address

    from common.cluster_shape import cluster_address

    joined = cluster_address()
    if joined:
        return joined, None
    with socket.socket() as s:  # a free port for the local GCS (taken meanwhile by another process: Ray fails to start)
        s.bind(("", 0))
        port = s.getsockname()[1]
    return f"{get_node_ip_address()}:{port}", port


@contextlib.contextmanager
def _environment(name: str, value: int | None):
    """`name=value` in os.environ within the block (nothing where value is None), as it was after."""
    saved = os.environ.get(name)
    if value is not None:
        os.environ[name] = str(value)
    try:
        yield
    finally:
        if value is not None and saved is None:
            del os.environ[name]
        elif value is not None:
            os.environ[name] = saved


def started_ray_here() -> bool:
    """Whether this process started the Ray it is connected to (a local one), rather than joined a cluster."""
    import ray

    return bool(_our_node) and ray.is_initialized() and ray.get_runtime_context().get_node_id() == _our_node


def what_failed(exc: BaseException) -> str:
    """The error itself, in one line: a Train run's first failed worker's, a Ray task's own (their text
    is a traceback whose last line is the error), or the exception's first line."""
    failures = getattr(exc, "worker_failures", None) or {}
    if failures:  # ray.train.WorkerGroupError
        exc = failures[min(failures)]
    exc = getattr(exc, "controller_failure", None) or exc  # ray.train.ControllerError
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # a Ray task's text holds its chain of errors: the last of the user's code (ENOSPC under Ray Data's
    # "UserCodeException: UDF failed to process a data block"), not Ray's own wrappers
    raised = [line for line in lines[1:] if _ERROR_LINE.match(line) and not line.startswith("ray.")]
    if raised:
        return raised[-1]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


_ERROR_LINE = re.compile(r"(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit)(?:\(\w+\))?: ")


def report_failure(tool: str, exc: BaseException, verbose: bool = False) -> int:
    """A failure during the work: one line saying what failed, the whole traceback in a log file (in Ray's
    session logs when this process started Ray) whose path the line gives.  Returns the exit code, 1."""
    import ray

    if started_ray_here():
        ray.shutdown()  # this process started Ray: stop it first, so no late line of a worker follows this one
    folder = _logs_dir if _logs_dir and os.path.isdir(_logs_dir) else tempfile.gettempdir()
    path = os.path.join(folder, f"{tool.removesuffix('.py')}-failed-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    with open(path, "w") as f:
        f.write("".join(traceback.format_exception(exc)))
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"{tool}: failed: {what_failed(exc)} (traceback: {path})", file=sys.stderr, flush=True)
    return 1


class _Lines:
    """The relay's default composer: every item is a line, printed as it comes."""

    def feed(self, item) -> list[str]:
        return [item]

    def end(self) -> list[str]:
        return []


class ConsoleRelay:
    """Prints, in the driver, the lines Train workers `put` into `queue` (rank 0's progress and epoch
    lines), while `fit()` runs:

        with ConsoleRelay() as queue:
            result = make_trainer(cfg, name, console=queue).fit()

    `compose`, when given, turns what arrives into the lines printed: `feed(item)` and, when the relay
    closes, `end()` each return a list of lines (items other than lines can then be sent, and held)."""

    def __init__(self, compose=None, poll_s: float = 0.5):
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # no CPU: never competes with training; on this node: lives as long as the console it feeds
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self.compose = compose or _Lines()
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._print_lines, name="console-relay", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self.queue

    def __exit__(self, *exc) -> None:
        import ray

        self._stop.set()
        self._thread.join()
        try:
            size = self.queue.size()
            if size:  # whatever arrived after the last poll
                for item in self.queue.get_nowait_batch(size):
                    self._print(self.compose.feed(item))
            self.queue.shutdown()
        except ray.exceptions.RayError:  # lines are not results: a lost relay must not fail the run
            pass
        self._print(self.compose.end())

    @staticmethod
    def _print(lines: list[str]) -> None:
        for line in lines:
            print(line, flush=True)

    def _print_lines(self) -> None:
        from ray.util.queue import Empty

        import ray

        while not self._stop.is_set():
            try:
                item = self.queue.get(timeout=self.poll_s)
            except Empty:
                continue
            except ray.exceptions.RayError:  # the relay is gone (its node lost): the run goes on without it
                return
            self._print(self.compose.feed(item))
