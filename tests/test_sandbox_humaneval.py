"""All 164 HumanEval problems through the hardened checker: every canonical solution passes,
and a wrong body (`return None`) fails every one, every problem judged across the value
boundary (the tests in a sandbox of their own; none falls back to the shared process).

Guards against the harness rejecting honest code (the prompt re-run in the tests' process,
values crossing as plain types, the audit hook's refusals, the filesystem view, Landlock's
narrower reads) and against a test script that passes anything.
"""

import gzip
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ray_conductor.config import default_data_dir
from ray_conductor.verify.code import CROSSING, humaneval_correct

HUMANEVAL = Path(default_data_dir()) / "benchmarks" / "HumanEval.jsonl.gz"


@pytest.mark.slow
@pytest.mark.skipif(not HUMANEVAL.exists(), reason="shared data not laid out")
def test_canonical_solutions_pass_and_wrong_ones_fail():
    with gzip.open(HUMANEVAL, "rt") as f:
        problems = [json.loads(line) for line in f]

    def judge(p):
        return (p["task_id"], humaneval_correct(p["canonical_solution"], p),
                humaneval_correct("    return None\n", p))

    before = CROSSING.copy()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(judge, problems))
    assert CROSSING - before == {"boundary": 2 * 164}
    assert len(results) == 164
    assert [t for t, good, _ in results if not good] == []
    assert [t for t, _, bad in results if bad] == []
