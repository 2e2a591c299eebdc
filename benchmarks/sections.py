"""Run benchmark sections as child processes under a wall-clock budget: one hard cap per section, JSON after each.

The GPU suites (:mod:`benchmarks.gpu_suite`, :mod:`benchmarks.training.gpu_suite`) run every section in its own
Python process, so a crash, a hang or an out-of-memory ends that section only. :func:`run_section` runs one
:class:`Section` (its command carries its own budget argument; the child and its descendants are killed at
``cap_s``); :func:`run_sections` runs a list of them under a total budget:

* a section starts only when ``plan(name, left_s)`` returns a :class:`Section` (None: skipped, with the seconds
  left) and at least ``min_start_s`` of the budget is left;
* after each section ``save(results)`` is called, so a cut run keeps every finished section's result.

A section's result: ``cmd``, ``rc`` (None when killed), ``timed_out``, ``wall_s``, ``cap_s``; with a ``record``
path the JSON the child wrote there is merged in (``error`` when it wrote none); with a ``log`` path the child's
stdout and stderr go to that file and the result keeps ``log`` and ``log_tail`` (else they go to this process's).

Example::

    plan = lambda name, left: Section(name=name, cmd=[sys.executable, "-m", f"bench.{name}", "--budget-s",
                                                      str(left - 10)], cap_s=left)
    results = run_sections(["a", "b"], plan, budget_s=300, save=lambda r: print(r))
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

__all__ = ["Section", "run_section", "run_sections"]

LOG_TAIL_CHARS = 3000


@dataclasses.dataclass(frozen=True, kw_only=True)
class Section:
    """One child process.

    Attributes:
      name: the section's name.
      cmd: its command line (including its own budget argument, e.g. ``--budget-s``).
      cap_s: hard wall-clock cap: the process (and its descendants) is killed past it.
      record: path of the JSON record the child writes (removed before it starts; merged into the result).
      log: path of a file for the child's stdout and stderr (None: inherit this process's).
      env: the child's environment (None: this process's).
    """

    name: str
    cmd: Sequence[str]
    cap_s: float
    record: str | None = None
    log: str | None = None
    env: dict | None = None


def _descendants(pid: int) -> list[int]:
    """Process ids of ``pid``'s descendants (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # field 4, after the parenthesized name
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s descendants, then ``proc``; wait for it."""
    for pid in _descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    proc.kill()
    proc.wait()


def _read_record(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"error": f"unreadable record {path}: {type(e).__name__}: {e}"}


def run_section(section: Section) -> dict:
    """Run ``section`` to its end or its cap; returns its result (see the module docstring)."""
    if section.record and os.path.exists(section.record):
        os.remove(section.record)
    t0 = time.time()
    log = open(section.log, "w") if section.log else None  # noqa: SIM115 - closed below
    try:
        out = {} if log is None else {"stdout": log, "stderr": subprocess.STDOUT}
        proc = subprocess.Popen(list(section.cmd), env=section.env, **out)
        try:
            rc, timed_out = proc.wait(timeout=section.cap_s), False
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            rc, timed_out = None, True
        except BaseException:  # e.g. KeyboardInterrupt: the child must not outlive this process
            _kill_tree(proc)
            raise
    finally:
        if log is not None:
            log.close()
    result = {}
    if section.record:
        record = _read_record(section.record)
        if record is not None:
            result.update(record)
        elif timed_out:
            result["error"] = f"killed at its {section.cap_s:.0f} s cap before it wrote {section.record}"
        else:
            result["error"] = f"process ended with rc {rc} without a record ({section.record})"
    if log is not None:
        with open(section.log, errors="replace") as f:
            result.update(log=section.log, log_tail=f.read()[-LOG_TAIL_CHARS:])
    result.update(cmd=list(section.cmd), rc=rc, timed_out=timed_out, wall_s=time.time() - t0, cap_s=section.cap_s)
    return result


def run_sections(names: Sequence[str], plan: Callable[[str, float], Section | None], *, budget_s: float,
                 save: Callable[[dict], None] = lambda results: None, min_start_s: float = 0.0,
                 announce: Callable[[str], None] = lambda line: print(line, flush=True)) -> dict:
    """Run the sections ``plan(name, seconds left)`` gives, in order, within ``budget_s``; ``{name: result}``.

    A section is skipped (``{"skipped": "budget (N s left)"}``) when less than ``min_start_s`` is left or ``plan``
    returns None; a section whose process cannot start gets ``{"error": ...}``; ``save(results)`` runs after every
    section.
    """
    t_start = time.time()
    results: dict = {}
    for name in names:
        left = budget_s - (time.time() - t_start)
        section = plan(name, left) if left >= min_start_s else None
        if section is None:
            results[name] = {"skipped": f"budget ({left:.0f} s left)"}
            announce(f"==== {name}: skipped ({left:.0f} s of the budget left)")
        else:
            announce(f"==== {name} (cap {section.cap_s:.0f} s, {left:.0f} s of the budget left)")
            try:
                results[name] = run_section(section)
            except Exception as e:  # noqa: BLE001 - e.g. a command that cannot start: recorded, the next runs
                results[name] = {"error": f"{type(e).__name__}: {e}", "cmd": list(section.cmd)}
        save(results)
    return results
