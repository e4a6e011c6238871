"""A failed trial's error keeps its cause: Ray's tracebacks put the exception's message last."""
from hierclr.runtime.sweep_summary import TrialRow, clip_error, error_line, table_csv

TRACE = "RayTaskError(ValueError): ray::ImplicitFunc.train()\n" + "  File x, line 1\n" * 300 + \
    "ValueError: data.train has 359 images, fewer than the 5000 prototypes asked for (clustering.sizes)\n"


def test_clip_keeps_the_start_and_the_cause():
    clipped = clip_error(TRACE, 2000)
    assert len(clipped) <= 2000 and clipped.startswith("RayTaskError(ValueError)")
    assert clipped.endswith("fewer than the 5000 prototypes asked for (clustering.sizes)\n")
    assert clip_error("short", 2000) == "short"


def test_the_table_shows_the_exception_message():
    assert error_line(TRACE).startswith("ValueError: data.train has 359 images")
    row = TrialRow(trial_id="t1", params={}, status="FAILED", epochs=0, score=None, score_epoch=None, error=TRACE)
    import csv
    import io

    last = list(csv.reader(io.StringIO(table_csv([row], "m", []))))[1][-1]
    assert last == "ValueError: data.train has 359 images, fewer than the 5000 prototypes asked for (clustering.sizes)"
