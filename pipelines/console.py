"""The console is ours: our progress and result lines by default, Ray's INFO chatter in its session logs.

Ray writes everything to its session logs (`<session>/logs`) whatever the console shows, so quieting the
console loses nothing.  It uses Ray's own switches: `ray.init(logging_level=...)` for the driver's `ray`
logger, Ray Train's `RunConfig(logging_config=LoggingConfig(log_level=...))` for its controller and
workers, and the standard `logging` level of the console handlers Ray attaches to its documented
loggers (`ray.data`, `ray.train`, `ray.tune`, and the root logger of a Train worker); their file handlers
keep every record.  Warnings and errors still reach the console.  `--verbose` leaves all of it as Ray
sets it.

Lines from rank 0 of a Train run reach the driver through a `ConsoleRelay` (a Ray queue), so they print
once, without Ray's `(RayTrainWorker pid=...)` prefix, whether the driver is a shell or `ray job submit`.
"""

from __future__ import annotations

import argparse
import logging
import threading

QUIET_LEVEL = logging.WARNING
RAY_LIBRARY_LOGGERS = ("ray.data", "ray.train", "ray.tune")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's own INFO output (Ray Data's progress log, Train's reports, ...)")


def quiet_console_handlers(logger_name: str = "") -> None:
    """Console handlers of `logger_name` (root by default) pass warnings and errors only; file handlers
    keep everything."""
    for handler in logging.getLogger(logger_name).handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(QUIET_LEVEL)


def train_log_level(verbose: bool) -> str:
    """For Ray Train's `LoggingConfig(log_level=...)`."""
    return "INFO" if verbose else logging.getLevelName(QUIET_LEVEL)


def start_ray(verbose: bool = False, **init_args) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local one, with the console as this module keeps it;
    prints where the dashboard and Ray's logs are, once.  A Ray already initialised is left as it is."""
    import ray

    if not verbose:
        import ray.data  # noqa: F401  (its loggers get their handlers on import)
        import ray.train  # noqa: F401
        for name in RAY_LIBRARY_LOGGERS:
            quiet_console_handlers(name)
    if ray.is_initialized():
        return
    context = ray.init(logging_level=logging.INFO if verbose else QUIET_LEVEL, **init_args)
    dashboard = f"http://{context.dashboard_url}" if context.dashboard_url else "not running"
    print(f"Ray dashboard: {dashboard}; Ray's own logs: {context.address_info['session_dir']}/logs",
          flush=True)


class ConsoleRelay:
    """Prints, in the driver, the lines Train workers `put` into `queue` (rank 0's progress and epoch
    lines), while `fit()` runs:

        with ConsoleRelay() as queue:
            result = make_trainer(cfg, name, console=queue).fit()
    """

    def __init__(self, poll_s: float = 0.5):
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})  # never competes with training for CPUs
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._print_lines, name="console-relay", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self.queue

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        size = self.queue.size()
        if size:  # whatever arrived after the last poll
            for line in self.queue.get_nowait_batch(size):
                print(line, flush=True)
        self.queue.shutdown()

    def _print_lines(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                line = self.queue.get(timeout=self.poll_s)
            except Empty:
                continue
            print(line, flush=True)
