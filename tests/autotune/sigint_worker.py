"""Subprocess body of the SIGINT test: the ``jq-autotune`` CLI, parked inside the tuning loop.

The real benchmark is wrapped in :class:`fakes.ParkAfterFirstPattern`: once the state file on disk
records a finished pattern, the next measurement prints ``PARKED`` on stdout and waits for a signal.
The test sends SIGINT only after reading that line, so the interrupt always lands in the tuning loop
(never after a fast run finished).

Usage: python sigint_worker.py <jq-autotune arguments>  (must include --output)
"""

import signal
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from fakes import ParkAfterFirstPattern  # noqa: E402

from jq_autotune import workflow  # noqa: E402
from jq_autotune.cli import main  # noqa: E402

if __name__ == "__main__":
    # A child inherits an ignored SIGINT disposition and a blocked signal mask from the process that starts it
    # (here a pytest-xdist worker, after hundreds of tests); either makes the parked run deaf to the test's
    # SIGINT. Start from Python's defaults, and say what they were.
    inherited = (signal.getsignal(signal.SIGINT), sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"inherited SIGINT handler {inherited[0]!r}, blocked signals {inherited[1]}", flush=True)
    argv = sys.argv[1:]
    state_file = Path(argv[argv.index("--output") + 1]) / "autotuner_state.yaml"
    make = workflow.make_benchmark
    workflow.make_benchmark = lambda *a, **k: ParkAfterFirstPattern(make(*a, **k), state_file)
    sys.exit(main(argv))
