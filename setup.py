"""setup.cfg holds the metadata; this only puts the checkout's config.yml into the built `pipelines` package."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConfig(build_py):
    """The wheel's pipelines/config.yml is a build-time copy of the top-level config.yml: one file in git."""

    def run(self) -> None:
        """Build the packages, then copy config.yml in as the installed service's default config."""
        super().run()
        target = Path(self.build_lib) / "pipelines"
        self.mkpath(str(target))
        self.copy_file("config.yml", str(target / "config.yml"))


setup(cmdclass={"build_py": BuildPyWithConfig})
