"""Long silent work reports progress (issue 16): the benchmark's stages, the embedded teachers' pretraining."""

import io
import logging

from tdd_lab import bench
from tdd_lab.pretrain import progress_lines


def test_benchmark_prints_each_stage_as_it_runs():
    out = io.StringIO()
    results = bench.run_stages([("first", lambda: {"a": 1.0}), ("second", lambda: {"b": 2.0})], out=out)
    assert results == {"a": 1.0, "b": 2.0}
    lines = out.getvalue().splitlines()
    assert lines[0] == "bench [1/2] first ..." and lines[2] == "bench [2/2] second ..."
    assert lines[1].startswith("bench [1/2] first: ") and lines[1].endswith("s in all)")
    assert len(lines) == 4


def test_pretraining_logs_progress_lines(caplog):
    report = progress_lines(50, "pretraining digits teacher")
    with caplog.at_level(logging.INFO, logger="tdd_lab.pretrain"):
        for step in range(50):
            report(step, 0.5)
    steps = [r.getMessage().split(", ")[0] for r in caplog.records]
    assert steps == [f"pretraining digits teacher: step {k}/50" for k in range(5, 51, 5)]  # every 10%
    assert "loss 0.5000" in caplog.records[-1].getMessage()
