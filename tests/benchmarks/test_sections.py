"""benchmarks.sections: one child process per section, a hard cap, a total budget, a result after each section.

The children are tiny ``python -c`` programs (no JAX): one that finishes and writes its record, one that crashes,
one that hangs (with a grandchild) and is killed at its cap.
"""

import json
import sys
import time

from benchmarks.sections import Section, run_section, run_sections


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (Linux ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_finished_section_merges_its_record_and_keeps_its_log_tail(tmp_path):
    record = tmp_path / "rec.json"
    record.write_text('{"stale": true}')  # an earlier run's record is removed before the section starts
    code = f"import json; print('hello from the section'); json.dump({{'x': 1}}, open({str(record)!r}, 'w'))"
    r = run_section(Section(name="ok", cmd=_py(code), cap_s=60, record=str(record), log=str(tmp_path / "ok.log")))
    assert r["x"] == 1 and "stale" not in r
    assert r["rc"] == 0 and r["timed_out"] is False and "error" not in r
    assert "hello from the section" in r["log_tail"] and r["log"] == str(tmp_path / "ok.log")
    assert r["cap_s"] == 60 and 0 < r["wall_s"] < 60


def test_a_crashing_section_reports_its_return_code_and_the_traceback_in_the_log(tmp_path):
    r = run_section(Section(name="crash", cmd=_py("1 / 0"), cap_s=60, record=str(tmp_path / "none.json"),
                            log=str(tmp_path / "crash.log")))
    assert r["rc"] == 1 and r["timed_out"] is False
    assert r["error"].startswith("process ended with rc 1 without a record")
    assert "ZeroDivisionError" in r["log_tail"]


def test_a_hanging_section_and_its_child_are_killed_at_the_cap(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; "
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    t0 = time.time()
    r = run_section(Section(name="hang", cmd=_py(code), cap_s=3, record=str(tmp_path / "none.json")))
    assert time.time() - t0 < 30
    assert r["timed_out"] is True and r["rc"] is None
    assert r["error"].startswith("killed at its 3 s cap")
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # reaped by init shortly after the kill
        if not _running(grandchild):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"grandchild {grandchild} still running after the cap")


def test_run_sections_skips_what_the_budget_cannot_hold_and_saves_after_each(tmp_path):
    saved = []
    plans = []

    def plan(name, left):
        plans.append((name, left))
        if name == "refused":
            return None
        return Section(name=name, cmd=_py("import time; time.sleep(1.5)"), cap_s=60)

    results = run_sections(["refused", "slow", "late"], plan, budget_s=1.0, min_start_s=0.5,
                           save=lambda r: saved.append(json.loads(json.dumps(r))), announce=lambda line: None)
    assert results["refused"]["skipped"].startswith("budget")
    assert results["slow"]["rc"] == 0 and results["slow"]["wall_s"] >= 1.5
    assert results["late"]["skipped"].startswith("budget (-")  # the slow one used more than the budget
    assert [n for n, _ in plans] == ["refused", "slow"]  # past min_start_s the plan is not even asked
    assert 0.5 < plans[1][1] <= 1.0
    assert [list(s) for s in saved] == [["refused"], ["refused", "slow"], ["refused", "slow", "late"]]


def test_run_sections_records_a_command_that_cannot_start_and_goes_on(tmp_path):
    def plan(name, left):
        cmd = [str(tmp_path / "no-such-program")] if name == "bad" else _py("pass")
        return Section(name=name, cmd=cmd, cap_s=60)

    results = run_sections(["bad", "good"], plan, budget_s=100, announce=lambda line: None)
    assert "FileNotFoundError" in results["bad"]["error"]
    assert results["good"]["rc"] == 0
