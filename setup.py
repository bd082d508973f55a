from setuptools import find_packages, setup

# PyAV: tested with 15.1 (what lmms-eval 0.7.3 resolves: it pins av<16) and 18.1.
AV = "av>=15,<19"

setup(
    name="vista-llm",
    version="0.1.0",
    description=(
        "Query-guided visual token pruning for video LLMs (LLaVA-OneVision, LLaVA-Video, "
        "Qwen2.5-VL) with fused Triton kernels and a PyTorch reference."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vista", "vista.*", "vista_kernels", "vista_kernels.*"]),
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "triton>=3.0",
        "transformers>=5.0,<6",
        "numpy",
        "tqdm",
        AV,
        "pillow",
        "matplotlib",
    ],
    extras_require={
        "test": [
            "pytest>=8", "pytest-benchmark", "hypothesis", "numpy", "scipy", AV, "pillow", "matplotlib",
            "pyarrow",
        ],
        "eval": ["pyarrow", AV, "pillow"],
        "video": [AV, "pillow", "matplotlib"],
        # lmms-eval 0.7.3 imports filelock._api, which filelock 4 removed
        "lmms": ["lmms-eval>=0.7.3,<0.8", "filelock<4"],
        "flash": ["flash-attn"],
    },
    entry_points={
        "console_scripts": ["vista=vista.cli:main"],
        "lmms_eval.models": ["vista = vista.integrations:lmms_eval_manifests"],
    },
)
