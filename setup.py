"""Only for what pyproject.toml cannot say: the wheel also carries `modelops-lm-eval.pth` at its top level, the
one-line start-up hook that lets lm-eval's own command line find `--model modelops` (modelops/eval/lm_eval_hook.py).
Editable installs do not carry top-level files; scripts/setup.sh copies the hook there."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HOOK = "modelops-lm-eval.pth"


class BuildWithHook(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(HOOK, str(Path(self.build_lib) / HOOK))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / HOOK)]


setup(cmdclass={"build_py": BuildWithHook})
