"""Build hook: ship the repository's checkpoints/ in the wheel as selrel_jax/_checkpoints/.

Everything else about the package is declared in pyproject.toml. Checkpoints
stay in the top-level checkpoints/<name>/ directory of the source tree (where
``selrel_jax.models.load(name)`` looks first); wheels carry a copy inside the
package, where ``load`` looks next. The sdist includes them via MANIFEST.in.
"""

import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

CHECKPOINTS = pathlib.Path(__file__).resolve().parent / "checkpoints"


class BuildPyWithCheckpoints(build_py):
    def run(self):
        super().run()
        if CHECKPOINTS.is_dir() and not getattr(self, "editable_mode", False):
            target = pathlib.Path(self.build_lib) / "selrel_jax" / "_checkpoints"
            shutil.copytree(
                CHECKPOINTS, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*")
            )


setup(cmdclass={"build_py": BuildPyWithCheckpoints})
