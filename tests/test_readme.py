"""The README's embedding example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_embedding_example_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Embedding", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the Embedding section has no python example"
    code = match.group(1).replace('"/tmp/outbox"', repr(str(tmp_path / "outbox")))
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # structlog's default logger prints to stdout too: keep the example's own lines
    lines = [ln for ln in result.stdout.splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", ln)]
    assert lines[0].startswith("otp_")
    # a made-up code is wrong, not an error (or, once in a million, right)
    assert lines[1] in ("False invalid_code 2", "True None 0")
    assert lines[2].startswith("serving on http://127.0.0.1:")
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1
    assert len(list((tmp_path / "outbox").glob("*.txt"))) == 1


def test_readme_layout_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("## ", 1)[0]
    missing = []
    for path in sorted((ROOT / "otpd").rglob("*.py")):
        relative = path.relative_to(ROOT / "otpd")
        folders = [f"{part}/" for part in relative.parts[:-1]]
        named = all(f in layout for f in folders) and (
            path.name in layout or (path.name == "__init__.py" and folders)
        )
        if not named:
            missing.append(str(relative))
    assert not missing, f"README layout does not name {missing}"
