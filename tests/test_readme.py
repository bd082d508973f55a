"""Every ```python block of README.md runs as written.

The blocks run in a fresh namespace each, in a temporary working directory, against tiny random
models: the only changes made to a block's text are the substitutions in ``SUBSTITUTE`` (the paths
of real checkpoints -> tiny saved models of the same architectures, ``clip.mp4`` -> a synthetic
clip, ``device="cuda"`` -> CPU). A block that names a path outside that table fails here, so a new
README block is either runnable or given a substitution on purpose.
"""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def _substitutions(llava: str, scout: str, clip: str) -> dict:
    return {
        "/models/llava-onevision-qwen2-7b-ov-hf": llava,
        "models/llava-onevision-7b": llava,
        "/models/blip2-itm-vit-g": scout,
        "models/blip2-itm": scout,
        '"clip.mp4"': repr(clip),
        'device="cuda"': 'device="cpu"',
    }


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 5, "README.md lost its Python examples (or the pattern no longer finds them)"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from vista.video import synthetic_video, write_video

    d = tmp_path_factory.mktemp("readme_clip")
    return write_video(str(d / "clip.mp4"), synthetic_video(16, height=64, width=64, seed=1).frames, fps=8.0)


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(i, llava, scout, clip, tmp_path, monkeypatch):
    code = BLOCKS[i]
    for old, new in _substitutions(llava, scout, clip).items():
        code = code.replace(old, new)
    uncommented = "\n".join(line.split("#", 1)[0] for line in code.splitlines())
    leftover = re.findall(r"[\"'](/models/[^\"']+|models/[^\"']+)[\"']", uncommented)
    assert not leftover, f"README block {i} names checkpoint paths this test does not substitute: {leftover}"
    monkeypatch.chdir(tmp_path)  # files the blocks write (map.png, tiny-qwen/) land here
    exec(compile(code, f"README.md python block {i}", "exec"), {"__name__": f"readme_block_{i}"})

