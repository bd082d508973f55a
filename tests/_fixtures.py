"""Tiny saved models shared by tests/test_cli.py and tests/test_pipeline.py (fixtures in conftest.py)."""


def tiny_dir(tmp_path_factory, kind: str) -> str:
    """Build a tiny saved model ("llava", "qwen" or "scout") once per test session; its directory."""
    d = tmp_path_factory.getbasetemp() / "vista_tiny" / kind
    if not (d / "config.json").exists():
        if kind == "llava":
            from vista.tiny_models import build_tiny_llava_onevision as build
        elif kind == "qwen":
            from vista.tiny_models import build_tiny_qwen2_5_vl as build
        else:
            from vista.scout import build_tiny_scout as build
        build(str(d), seed=0)
    return str(d)
