"""The CI-runner emulation (tests/ci_runner.py) that runs examples/ci/* against the lab
(tests/test_lab.py::test_ci_example_runs_as_written): its own semantics, on tiny pipelines, without root."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.ci_runner import GitHubRunner, GitLabRunner, NotEmulated, runner_python


# The module fixture is built once: every test here runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_ci_runner")


@pytest.fixture(scope="module")
def python_bin(tmp_path_factory) -> Path:
    return runner_python(tmp_path_factory.mktemp("python") / "venv", with_pip=False)


@pytest.fixture
def user_repo(tmp_path) -> Path:
    repo = tmp_path / "user-repo"
    repo.mkdir()
    (repo / "rbacbridge.yaml").write_text("account_id: '123456789012'\n")
    return repo


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def git_repo(path: Path) -> str:
    """A repository with two commits; returns the first one's id (the second adds `later.txt`)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    path.mkdir()
    git("init", "-q")
    (path / "first.txt").write_text("1\n")
    git("add", "."), git("commit", "-qm", "first")
    first = git("rev-parse", "HEAD")
    (path / "later.txt").write_text("2\n")
    git("add", "."), git("commit", "-qm", "later")
    return first


def test_github_steps_env_path_expressions_and_always(tmp_path, user_repo, python_bin):
    workflow = write(tmp_path / "wf.yml", """
        on: push
        env: {TOP: top}
        jobs:
          one:
            runs-on: ubuntu-latest
            env: {JOB: "${{ vars.V }}-${{ env.TOP }}"}
            steps:
              - uses: actions/checkout@v4
              - name: export
                run: |
                  echo "FROM_STEP=exported" >> "$GITHUB_ENV"
                  printf 'MULTI<<EOF\\nline 1\\nline 2\\nEOF\\n' >> "$GITHUB_ENV"
                  mkdir -p "$RUNNER_TEMP/bin" && printf '#!/bin/sh\\necho tool ran\\n' > "$RUNNER_TEMP/bin/tool"
                  chmod +x "$RUNNER_TEMP/bin/tool" && echo "$RUNNER_TEMP/bin" >> "$GITHUB_PATH"
                  test -z "${FROM_STEP:-}"   # not in this step's own environment
              - name: see
                env: {SECRET: "${{ secrets.S }}"}
                run: |
                  echo "$JOB $FROM_STEP $SECRET ${{ env.FROM_STEP }}"; echo "$MULTI" | wc -l; tool
                  test -f rbacbridge.yaml && test "$PWD" = "${{ github.workspace }}"
                  ! command -v python && ! command -v pytest && test -z "${PYTHONPATH:-}" && test -z "${VIRTUAL_ENV:-}"
              - uses: actions/setup-python@v5
                with: {python-version: "3.12"}
              - name: python now
                run: python -c 'import sys; print("python", sys.version_info[0])'
              - name: no pipefail by default
                run: false | tee /dev/null
              - name: pipefail with shell bash
                shell: bash
                run: false | tee /dev/null
              - name: after a failure
                run: echo must not run
              - name: report
                if: ${{ always() }}
                uses: actions/upload-artifact@v4
                with: {name: kept, path: rbacbridge.yaml}
              - name: on failure
                if: failure()
                run: echo cleaning up
        """)
    result = GitHubRunner(workflow, tmp_path / "run", user_repo=user_repo, secrets={"S": "s3cret"}, vars={"V": "v"},
                          python_bin=python_bin).run()
    assert [(s.name, s.status) for s in result.steps] == [
        ("actions/checkout@v4", "success"), ("export", "success"), ("see", "success"),
        ("actions/setup-python@v5", "success"), ("python now", "success"), ("no pipefail by default", "success"),
        ("pipefail with shell bash", "failure"), ("after a failure", "skipped"), ("report", "success"),
        ("on failure", "success")], result.log()
    assert result.step("see").output.splitlines()[:3] == ["v-top exported s3cret exported", "2", "tool ran"]
    assert "python 3" in result.step("python now").output
    assert (tmp_path / "run" / "artifacts" / "kept" / "rbacbridge.yaml").exists()


def test_github_checkout_of_another_repository_at_a_ref(tmp_path, user_repo, python_bin):
    first = git_repo(tmp_path / "tool")
    workflow = write(tmp_path / "wf.yml", """
        jobs:
          one:
            steps:
              - uses: actions/checkout@v4
                with: {repository: "${{ vars.REPO }}", ref: "${{ vars.REF }}", path: src}
              - run: test -f src/first.txt && ! test -e src/later.txt && ! test -e rbacbridge.yaml
        """)
    ok = GitHubRunner(workflow, tmp_path / "ok", user_repo=user_repo, repositories={"o/tool": tmp_path / "tool"},
                      vars={"REPO": "o/tool", "REF": first}, python_bin=python_bin).run()
    assert [s.status for s in ok.steps] == ["success", "success"], ok.log()  # at REF; the user's repository not checked out
    missing = GitHubRunner(workflow, tmp_path / "missing", user_repo=user_repo, repositories={"o/tool": tmp_path / "tool"},
                           vars={"REPO": "o/tool", "REF": "v0.1.0"}, python_bin=python_bin).run()
    assert [s.status for s in missing.steps] == ["failure", "skipped"]
    assert "v0.1.0" in missing.steps[0].output


@pytest.mark.parametrize("step", [
    "uses: actions/cache@v4",
    "run: echo ${{ github.event.inputs.x }}",
    "{run: echo, continue-on-error: true}",
    "{run: echo, if: \"github.ref == 'main'\"}",
])
def test_github_what_is_not_emulated_raises(tmp_path, user_repo, python_bin, step):
    workflow = write(tmp_path / "wf.yml", f"jobs:\n  one:\n    steps:\n      - {step}\n")
    with pytest.raises(NotEmulated):
        GitHubRunner(workflow, tmp_path / "run", user_repo=user_repo, python_bin=python_bin).run()


def test_github_hook_runs_after_its_step_and_must_exist(tmp_path, user_repo, python_bin):
    workflow = write(tmp_path / "wf.yml", """
        jobs:
          one:
            steps:
              - {name: Setup, run: echo setup > order}
              - {name: Verify, run: "cat order hook > seen"}
        """)
    hooked = []
    GitHubRunner(workflow, tmp_path / "run", user_repo=user_repo, python_bin=python_bin,
                 after={"Setup": lambda: (tmp_path / "run" / "workspace" / "hook").write_text("hook\n")}).run()
    assert (tmp_path / "run" / "workspace" / "seen").read_text() == "setup\nhook\n"
    with pytest.raises(NotEmulated, match="Set-up"):  # a renamed step: the test's hook must not silently vanish
        GitHubRunner(workflow, tmp_path / "again", user_repo=user_repo, python_bin=python_bin,
                     after={"Set-up": lambda: hooked.append(1)}).run()
    assert hooked == []
    failing = write(tmp_path / "failing.yml", "jobs:\n  one:\n    steps:\n      - {name: Setup, run: exit 3}\n")
    result = GitHubRunner(failing, tmp_path / "failing", user_repo=user_repo, python_bin=python_bin,
                          after={"Setup": lambda: hooked.append(1)}).run()
    assert [(s.status, s.returncode) for s in result.steps] == [("failure", 3)] and hooked == []


def test_gitlab_stages_when_artifacts_variables_extends_and_skips(tmp_path, user_repo, python_bin):
    pipeline = write(tmp_path / "gl.yml", """
        stages: [build, check, last]
        variables: {FROM_YAML: yaml, OVERRIDDEN: yaml}
        default:
          before_script: [echo default-before]
        .common:
          before_script:
            - echo common-before
          variables: {FROM_TEMPLATE: template}
        make:
          stage: build
          script:
            - apt-get update -qq && apt-get install -y git
            - echo kept > kept.txt && echo lost > lost.txt && echo "x" > project-only.txt
          artifacts: {paths: [kept.txt]}
        check:
          extends: .common
          stage: check
          script:
            - test -f kept.txt && ! test -e lost.txt && test -f rbacbridge.yaml
            - echo "$FROM_YAML $OVERRIDDEN $FROM_TEMPLATE $CI_JOB_NAME"
            - cat "$KEY_FILE"
            - test "$(stat -c %a "$KEY_FILE")" = 600
            - export SAME_SHELL=yes
            - test "$SAME_SHELL" = yes
            - echo checked > check.txt
            - false | tee /dev/null
          artifacts: {paths: [check.txt]}   # on_success: not passed on, the job fails
        skipped:
          stage: last
          script: [echo must not run]
        cleanup:
          stage: last
          when: always
          script: ["! test -e check.txt && echo cleaning"]
        """)
    result = GitLabRunner(pipeline, tmp_path / "run", user_repo=user_repo, python_bin=python_bin,
                          project_variables={"OVERRIDDEN": "project"}, file_variables={"KEY_FILE": "key content\n"},
                          skip=lambda command: "no apt here" if command.startswith("apt-get") else None).run()
    assert [(s.name, s.status) for s in result.steps] == [
        ("make", "success"), ("check", "failure"), ("skipped", "skipped"), ("cleanup", "success")], result.log()
    check = result.step("check")
    assert check.output.splitlines() == ["common-before", "yaml project template check", "key content"]
    assert "artifact make:kept.txt" in check.notes
    assert any(n.startswith("not run (no apt here): apt-get") for n in result.step("make").notes)
    assert result.step("make").output.strip() == "default-before"


def test_gitlab_default_takes_only_what_gitlab_allows(tmp_path, user_repo, python_bin):
    pipeline = write(tmp_path / "gl.yml", """
        default: {image: "python:3.12-slim", resource_group: rbacbridge}
        job: {script: [echo hi]}
        """)
    with pytest.raises(NotEmulated, match="resource_group"):
        GitLabRunner(pipeline, tmp_path / "run", user_repo=user_repo, python_bin=python_bin).run()
