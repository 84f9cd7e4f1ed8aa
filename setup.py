"""tfkd: robust knowledge distillation from RNN-T models with full-sum loss."""

from setuptools import find_packages, setup

# The commands: console script -> `tfkd.commands.<module>` (bin/<module> in a clone runs the same).
COMMANDS = {
    "tfkd-train": "train",
    "tfkd-evaluate": "evaluate",
    "tfkd-pseudo-label": "pseudo_label",
    "tfkd-export": "export",
    "tfkd-convert-tflite": "convert_tflite",
}

# The stack that works together on Python 3.11 (see README, "Dependencies"):
# tensorflow-io 0.37.1's compiled audio ops fail to load from TF 2.18 on, so TF
# stays at 2.17 and numpy below 2.
INSTALL_REQUIRES = [
    "tensorflow==2.17.1",
    "tensorflow-io==0.37.1",
    "keras==3.15.1",
    "numpy==1.26.4",
    "sentencepiece==0.2.3",
    "gin-config==0.5.0",
    "jiwer==4.0.0",
    "tqdm>=4.66,<5",
    "soundfile==0.14.0",
    "matplotlib==3.10.8",  # the study's plot (results/study.png); supports numpy 1.26
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=8,<10",
        "ruff==0.17.6",
    ],
}

setup(
    name="tfkd",
    version="0.1.0",
    description="Full-sum knowledge distillation for RNN-T models in TensorFlow/Keras",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.12",
    # The gin configs ship inside the package: gin/ installs as tfkd/gin/, where tfkd.config
    # looks for `gin/...` names after the current directory. gin/ is data, not a Python package.
    packages=find_packages(include=["tfkd", "tfkd.*"]) + ["tfkd.gin"],
    package_dir={"tfkd.gin": "gin"},
    package_data={"tfkd.gin": ["*.gin", "**/*.gin"]},
    entry_points={
        "console_scripts": [
            f"{name} = tfkd.commands.{module}:console_main" for name, module in COMMANDS.items()
        ],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license="Apache-2.0",
)
