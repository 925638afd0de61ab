"""What a deploy uploads (`gcloud run deploy --source .`), as gcloud itself lists it.

`gcloud meta list-files-for-upload` applies `.gcloudignore` exactly as a
deploy does, offline. Only the function may go up: `main.py`,
`requirements.txt` and the `assistant` package; never tests, venvs,
node_modules, run files, or anything that looks like a `.env` file.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import copy_of_the_project, project_files

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_PARTS = {"tests", ".venv", "node_modules", ".run", "__pycache__", "bench", "devtools"}


def uploaded(directory: Path) -> set[str]:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.fail("gcloud is not installed: it decides what a deploy uploads", pytrace=False)
    listing = subprocess.run(
        [gcloud, "meta", "list-files-for-upload"],
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return {line.strip() for line in listing.stdout.splitlines() if line.strip()}


def looks_like_env_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name == ".env" or name.startswith(".env.") or name.endswith(".env")


def test_the_project_uploads_exactly_the_function() -> None:
    files = uploaded(ROOT)
    package = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "assistant").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert files == {"main.py", "requirements.txt", *package}
    for path in files:
        assert not FORBIDDEN_PARTS & set(path.split("/")), path
        assert not looks_like_env_file(path), path


def test_the_ignore_rules_hold_for_files_that_may_appear_later(tmp_path: Path) -> None:
    shutil.copy(ROOT / ".gcloudignore", tmp_path)
    present = [
        "main.py", "requirements.txt", "assistant/__init__.py", "assistant/providers/x.py",
        "assistant/__pycache__/x.cpython-311.pyc", "assistant/.env", "assistant/.env.local",
        "assistant/prod.env", ".env", ".env.production", "secrets.env", "tests/test_x.py",
        ".venv/lib/site.py", "node_modules/firebase-tools/index.js", ".run/auth.log",
        "package.json", "package-lock.json", "firebase.json", "notes.md", "scratch.py",
    ]  # fmt: skip
    for name in present:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert uploaded(tmp_path) == {
        "main.py",
        "requirements.txt",
        "assistant/__init__.py",
        "assistant/providers/x.py",
    }


def test_a_build_uploads_what_its_steps_run_and_no_local_state(tmp_path: Path) -> None:
    """`gcloud builds submit --ignore-file=.gcloudignore.build` (cloudbuild.yaml): the test
    and smoke steps need the scripts, the tests and the Node lock file, and the deploy
    step needs .gcloudignore; never a venv, node_modules, run files or secrets."""
    copy_of_the_project(tmp_path)
    shutil.copy(ROOT / ".gcloudignore.build", tmp_path / ".gcloudignore")  # as the flag reads it
    local = [".venv/lib/site.py", "node_modules/x/index.js", ".run/auth.log", ".env", "a.env",
             "assistant/__pycache__/x.cpython-311.pyc", ".git/config",
             # a key as Google's docs name it, gcloud's and editors' state, bench output
             "key.json", "deploy-key.json", ".config/gcloud/credentials.db", ".idea/x.xml",
             ".firebase/hosting.cache", "bench/out/x.txt", ".coverage.host.1.2"]  # fmt: skip
    for name in local:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    files = uploaded(tmp_path)
    needed = {"scripts/test.sh", "scripts/smoke.sh", "scripts/venv.sh", "package-lock.json",
              "requirements-dev.txt", "tests/conftest.py", "main.py", ".gcloudignore"}  # fmt: skip
    assert needed <= files
    assert not set(local) & files


def test_the_project_files_are_known_without_git(tmp_path: Path) -> None:
    """A Cloud Build's upload has no `.git` (.gcloudignore.build leaves it out): the
    tests that copy the project read its files from the tree then, less what a run
    made there (the build's test step failed on `git ls-files`, and never deployed)."""
    copy_of_the_project(tmp_path)
    made = [".venv/lib/site.py", "node_modules/x/index.js", ".run/auth.log", "bench/out/x",
            "assistant/__pycache__/x.cpython-311.pyc", ".pytest_cache/v/x"]  # fmt: skip
    for name in made:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert not (tmp_path / ".git").exists()
    assert project_files(tmp_path) == sorted(project_files(ROOT))
