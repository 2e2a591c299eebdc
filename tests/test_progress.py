"""Progress bars leave no text on their line when the work ends, so the next print starts on a clean line
(issue 11 item 9: the calibration bar was glued to the summary printed after it)."""

import builtins
import sys

from jq.progress import progress


def _visible_tail(err: str) -> str:
    """What stays on the terminal's last line: the text after the last carriage return, minus erase-line codes."""
    return err.rsplit("\r", 1)[-1].replace("\033[K", "").replace("\033[A", "").strip()


def test_tqdm_bar_is_cleared_after_the_last_item(capsys):
    assert list(progress(range(3), desc="jq calibrate")) == [0, 1, 2]
    print("summary")
    captured = capsys.readouterr()
    assert _visible_tail(captured.err) == ""
    assert captured.out == "summary\n"


def test_plain_counter_without_tqdm_is_cleared_after_the_last_item(capsys, monkeypatch):
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    monkeypatch.delitem(sys.modules, "tqdm.auto", raising=False)
    assert list(progress([10, 20], desc="jq calibrate", unit="batch")) == [10, 20]
    err = capsys.readouterr().err
    assert "jq calibrate: 2/2 batch" in err  # it did count
    assert err.endswith("\r\033[K") and _visible_tail(err) == ""


def test_disabled_progress_prints_nothing(capsys):
    assert list(progress(range(2), desc="x", enabled=False)) == [0, 1]
    assert capsys.readouterr().err == ""
