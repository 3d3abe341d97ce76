"""The README's promises: two commands at the top, and CI runs exactly the second one."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _first_code_block():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_commands():
    commands = _first_code_block()
    assert len(commands) == 2
    install_and_run, test = commands
    assert install_and_run.startswith("./bootstrap && ") and "clipdex index" in install_and_run
    assert test == "./bootstrap test"


def test_ci_runs_the_readme_test_command():
    test_command = _first_code_block()[1]
    script = (REPO / ".ci" / "run").read_text()
    executed = [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]
    assert executed == [f"exec {test_command}"]
