"""README.md tells the truth about what the code does."""

from pathlib import Path

from envs.registry import markdown_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_family_table_is_generated_from_the_registry():
    assert markdown_table() in README, "regenerate README's table with `adaptbed envs --markdown`"


def test_ci_runs_exactly_the_readme_test_command():
    assert "make test" in README
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == "make test"


def test_no_placeholder_left():
    for marker in ("QUICKSTART_RESULTS", "FAMILY_TABLE", "SINUSOID_RESULTS", "STATUS\n"):
        assert marker not in README
