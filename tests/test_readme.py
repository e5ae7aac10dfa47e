"""The README's Python example runs as written, on a tiny model and a synthetic case."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(train_tiny, capsys):
    tiny = train_tiny("readme", {"model": {"size": 32}, "training": {"epochs": 1, "threads": 1},
                                 "split": {"mode": "patient", "test": 0.3, "val": 0.3, "seed": 1}},
                      patients=8, per_patient=3, seed=2)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "the README has no Python example"
    case = next((tiny.cohort / "images" / "active").iterdir())
    code = blocks[0].replace('"runs/pcle/best.ckpt"', repr(str(tiny.best))).replace(
        '"exams/patient-017/"', repr(str(case)))
    assert str(tiny.best) in code and str(case) in code, "the example's paths changed: update this test"
    capsys.readouterr()  # what training printed
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith(str(case))
    assert ("active inflammation" in printed[0]) != ("mucosal healing" in printed[0])
