"""Run a CI example's shell steps as written, taken from its YAML, on this machine (issue 21).

    result = GitHubRunner(workflow, workdir, user_repo=..., repositories={...}, secrets={...}, vars={...},
                          aws_env={...}, after={"Setup": play_controllers}).run()
    result = GitLabRunner(pipeline, workdir, user_repo=..., project_variables={...}, file_variables={...},
                          skip=skip_apt, after={"rbacbridge-setup": play_controllers}).run()

The shell is real (bash with the runner's flags); what a hosted runner provides is emulated, and anything
in the YAML this module does not know raises `NotEmulated` instead of being ignored:

GitHub Actions (one job): `run:` steps in order with `bash -e {0}` (`shell: bash`: `bash --noprofile
--norc -eo pipefail {0}`), `${{ secrets.X }}`, `${{ vars.X }}`, `${{ env.X }}`, `${{ github.workspace }}`,
`${{ runner.temp }}` substituted; `if:` `always()`/`success()`/`failure()`; `$GITHUB_ENV` and `$GITHUB_PATH`
carried to later steps. Actions: `actions/checkout` of the workflow's own repository copies `user_repo`
into the workspace; with `repository:` it clones `repositories[repository]` and checks out `ref:` (a ref
that is not there fails the step). `actions/setup-python` puts a Python on PATH (this machine's, in a
throwaway venv so an example's `pip install` cannot touch it; `python-version` is not honoured).
`aws-actions/configure-aws-credentials` exports `aws_env` and the region (no role is assumed).
`mikepenz/action-junit-report` records the report files it finds. `actions/upload-artifact` copies the
paths to `workdir/artifacts/<name>/`.

GitLab CI: jobs in stage order (file order within a stage); `before_script` (the job's, else the default's)
and `script` as one `bash` script under `set -eo pipefail`; `when: on_success|always|on_failure`;
`extends:` merged; each job starts in a fresh copy of `user_repo` (`$CI_PROJECT_DIR`) holding the
`artifacts: paths` of earlier stages' jobs (honouring `artifacts: when`); variables from the YAML (global,
then job), overridden by `project_variables`; `file_variables` are written to files and the variable
holds the path, as GitLab does for "File" variables. `image:` is not run: the same Python as above is on
PATH. A command for which `skip(command)` returns a reason is not run (e.g. `apt-get`); it is recorded.

`after={name: fn}`: the test's own action right after the step (job) of that name succeeded, e.g. the lab
playing the cluster's controllers; a name that is not in the YAML raises `NotEmulated`.

The environment is built from scratch: PATH of the system directories (+ the Python), HOME in the work
directory, LANG, and this machine's PIP_* settings (its package index) — nothing of the test process's
PATH, PYTHONPATH or venv leaks in, so an example that does not install rbacbridge cannot find one.
"""

from __future__ import annotations

import copy
import glob
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STEP_TIMEOUT = 600.0
_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


class NotEmulated(Exception):
    """The YAML uses something this runner does not emulate: decide how to emulate it, do not ignore it."""


@dataclass
class Step:
    name: str
    status: str  # success | failure | skipped
    returncode: int | None = None
    output: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.name}: {self.status} (rc {self.returncode}, {self.seconds:.1f}s) {'; '.join(self.notes)}\n" \
               f"{self.output[-chars:]}"


@dataclass
class Result:
    steps: list[Step]
    workdir: Path

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def log(self, chars: int = 3000) -> str:
        return "\n".join(s.tail(chars) for s in self.steps)


def base_env(home: Path, python_bin: Path | None) -> dict[str, str]:
    """A runner's environment: no PATH, PYTHONPATH or venv of the test process."""
    env = {"PATH": f"{python_bin}:{SYSTEM_PATH}" if python_bin else SYSTEM_PATH, "HOME": str(home), "LANG": "C.UTF-8", "CI": "true"}
    env.update({k: v for k, v in os.environ.items()
                if k.startswith("PIP_") or k.lower() in ("http_proxy", "https_proxy", "no_proxy")})
    return env


def runner_python(directory: Path, with_pip: bool = True) -> Path:
    """The runner's Python (setup-python, the job image's): this machine's base interpreter in a throwaway venv
    with pip, so `pip install` outside the example's own venv lands there, never in the machine's Python.
    Returns its bin directory."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(directory)], check=True,
                   capture_output=True)
    return directory / "bin"


def _run_shell(argv: list[str], script: str, path: Path, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    path.write_text(script)
    try:
        done = subprocess.run([*argv, str(path)], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=STEP_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        return 124, f"{exc.output or ''}\n(timed out after {STEP_TIMEOUT:.0f}s)"
    return done.returncode, done.stdout


def _copy_paths(patterns: list[str], source: Path, target: Path) -> list[str]:
    """Copy what `patterns` (files, directories, globs relative to source) match; returns what was copied."""
    copied = []
    for pattern in patterns:
        for match in sorted(glob.glob(str(source / pattern))):
            relative = Path(match).relative_to(source)
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            if Path(match).is_dir():
                shutil.copytree(match, destination, dirs_exist_ok=True, symlinks=True)
            else:
                shutil.copy2(match, destination)
            copied.append(str(relative))
    return copied


def _hooks_name_steps(after: dict[str, Callable[[], None]], names: list[str | None]) -> None:
    """A hook runs after the step (job) of its name, when that succeeded: the name must exist."""
    unknown = sorted(set(after) - set(names))
    if unknown:
        raise NotEmulated(f"no step or job named {unknown} to run the test's hook after")


# --- GitHub Actions --------------------------------------------------------------------------------------

_STEP_KEYS = {"name", "id", "if", "uses", "with", "run", "env", "shell", "working-directory"}
_JOB_KEYS = {"runs-on", "env", "steps", "defaults", "permissions", "timeout-minutes"}
_SHELLS = {None: ["bash", "-e"], "bash": ["bash", "--noprofile", "--norc", "-eo", "pipefail"]}


class GitHubRunner:
    def __init__(self, workflow: Path, workdir: Path, *, user_repo: Path, repository: str = "user/infra",
                 repositories: dict[str, Path] | None = None, secrets: dict[str, str] | None = None,
                 vars: dict[str, str] | None = None, aws_env: dict[str, str] | None = None,
                 after: dict[str, Callable[[], None]] | None = None, python_bin: Path | None = None):
        self.document = yaml.safe_load(Path(workflow).read_text())
        self.python_bin = python_bin
        self.workdir = Path(workdir)
        self.user_repo, self.repository = Path(user_repo), repository
        self.repositories = repositories or {}
        self.secrets, self.vars, self.aws_env = secrets or {}, vars or {}, aws_env or {}
        self.after = dict(after or {})
        self.workspace = self.workdir / "workspace"
        self.temp = self.workdir / "runner-temp"
        self.artifacts = self.workdir / "artifacts"
        self.pending_env: dict[str, str] = {}  # what a step exported ($GITHUB_ENV, actions): from the next step on
        self.pending_path: list[str] = []  # what a step added to PATH ($GITHUB_PATH, setup-python)

    def _job(self) -> dict:
        jobs = self.document.get("jobs") or {}
        if len(jobs) != 1:
            raise NotEmulated(f"{len(jobs)} jobs: only a single job is emulated")
        job = next(iter(jobs.values()))
        unknown = set(job) - _JOB_KEYS
        if unknown:
            raise NotEmulated(f"job keys {sorted(unknown)}")
        return job

    def expand(self, text: str, env: dict[str, str]) -> str:
        def value(match: re.Match) -> str:
            expression = match.group(1)
            context, _, name = expression.partition(".")
            if context == "secrets" and name.isidentifier():
                return self.secrets.get(name, "")
            if context == "vars" and name.isidentifier():
                return self.vars.get(name, "")
            if context == "env" and name.isidentifier():
                return env.get(name, "")
            known = {"github.workspace": str(self.workspace), "github.repository": self.repository,
                     "runner.temp": str(self.temp)}
            if expression in known:
                return known[expression]
            raise NotEmulated(f"expression ${{{{ {expression} }}}}")

        return _EXPRESSION.sub(value, str(text))

    @staticmethod
    def _should_run(condition: str | None, failed: bool) -> bool:
        condition = (condition or "success()").strip()
        match = _EXPRESSION.fullmatch(condition)
        condition = match.group(1) if match else condition
        if condition == "always()":
            return True
        if condition == "success()":
            return not failed
        if condition == "failure()":
            return failed
        if condition == "cancelled()":
            return False
        raise NotEmulated(f"if: {condition}")

    def run(self) -> Result:
        job = self._job()
        for directory in (self.workspace, self.temp, self.artifacts, self.workdir / "home", self.workdir / "step-files"):
            directory.mkdir(parents=True, exist_ok=True)
        python_bin = self.python_bin or runner_python(self.workdir / "python")
        env = base_env(self.workdir / "home", None)
        env.update(GITHUB_ACTIONS="true", GITHUB_WORKSPACE=str(self.workspace), RUNNER_TEMP=str(self.temp),
                   GITHUB_REPOSITORY=self.repository, GITHUB_STEP_SUMMARY=str(self.workdir / "step-summary.md"))
        for key, value in (self.document.get("env") or {}).items():
            env[key] = self.expand(value, env)
        for key, value in (job.get("env") or {}).items():
            env[key] = self.expand(value, env)
        shell = ((job.get("defaults") or {}).get("run") or {}).get("shell")
        _hooks_name_steps(self.after, [s.get("name") for s in job["steps"]])
        steps: list[Step] = []
        failed = False
        for index, spec in enumerate(job["steps"]):
            unknown = set(spec) - _STEP_KEYS
            if unknown:
                raise NotEmulated(f"step keys {sorted(unknown)}")
            name = spec.get("name") or (f"Run {spec['run'].splitlines()[0]}" if "run" in spec else spec["uses"])
            if not self._should_run(spec.get("if"), failed):
                steps.append(Step(name, "skipped"))
                continue
            env.update(self.pending_env)
            env["PATH"] = ":".join([*self.pending_path, env["PATH"]])
            self.pending_env, self.pending_path = {}, []
            step_env = {**env, **{k: self.expand(v, env) for k, v in (spec.get("env") or {}).items()}}
            began = time.monotonic()
            if "run" in spec:
                step = self._run(name, spec, step_env, spec.get("shell", shell), index)
            else:
                step = self._uses(name, spec, step_env, python_bin)
            step.seconds = time.monotonic() - began
            steps.append(step)
            if step.status == "failure":
                failed = True
            elif name in self.after:
                self.after.pop(name)()
        return Result(steps, self.workdir)

    def _run(self, name: str, spec: dict, env: dict[str, str], shell: str | None, index: int) -> Step:
        if shell not in _SHELLS:
            raise NotEmulated(f"shell: {shell}")
        files = self.workdir / "step-files"
        github_env, github_path = files / f"{index}.env", files / f"{index}.path"
        github_env.write_text(""), github_path.write_text("")
        cwd = self.workspace / self.expand(spec.get("working-directory", "."), env)
        code, output = _run_shell(_SHELLS[shell], self.expand(spec["run"], env), files / f"{index}.sh", cwd,
                                  {**env, "GITHUB_ENV": str(github_env), "GITHUB_PATH": str(github_path)})
        self._carry(github_env, github_path)
        return Step(name, "success" if code == 0 else "failure", code, output)

    def _carry(self, github_env: Path, github_path: Path) -> None:
        """What a step wrote to $GITHUB_ENV / $GITHUB_PATH, for the steps after it."""
        lines = github_env.read_text().splitlines()
        while lines:
            line = lines.pop(0)
            if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
                key, delimiter = line.split("<<", 1)
                value = []
                while lines and lines[0] != delimiter:
                    value.append(lines.pop(0))
                if lines:
                    lines.pop(0)
                self.pending_env[key] = "\n".join(value)
            elif "=" in line:
                key, value = line.split("=", 1)
                self.pending_env[key] = value
        for line in github_path.read_text().splitlines():
            if line.strip():
                self.pending_path.insert(0, line.strip())  # the last line written comes first

    def _uses(self, name: str, spec: dict, step_env: dict[str, str], python_bin: Path) -> Step:
        action = spec["uses"].split("@", 1)[0]
        inputs = {k: self.expand(v, step_env) for k, v in (spec.get("with") or {}).items()}
        if action == "actions/checkout":
            return self._checkout(name, inputs)
        if action == "actions/setup-python":
            self.pending_path.insert(0, str(python_bin))
            return Step(name, "success", 0, notes=[f"python-version {inputs.get('python-version')!r} not honoured: "
                                                   f"this machine's Python {sys.version.split()[0]}"])
        if action == "aws-actions/configure-aws-credentials":
            region = inputs.get("aws-region", "")
            self.pending_env.update({**self.aws_env, "AWS_REGION": region, "AWS_DEFAULT_REGION": region})
            return Step(name, "success", 0, notes=["the test's AWS environment exported; no role assumed"])
        if action == "mikepenz/action-junit-report":
            found = [str(Path(p).relative_to(self.workspace)) for pattern in inputs.get("report_paths", "").split(",")
                     for p in glob.glob(str(self.workspace / pattern.strip()))]
            return Step(name, "success", 0, notes=[f"reports found: {found}"])
        if action == "actions/upload-artifact":
            patterns = [p.strip() for p in inputs.get("path", "").splitlines() if p.strip()]
            copied = _copy_paths(patterns, self.workspace, self.artifacts / inputs.get("name", "artifact"))
            return Step(name, "success", 0, notes=[f"uploaded: {copied}"])
        raise NotEmulated(f"uses: {spec['uses']}")

    def _checkout(self, name: str, inputs: dict[str, str]) -> Step:
        repository = inputs.get("repository") or self.repository
        target = self.workspace / inputs.get("path", ".")
        if repository == self.repository:
            shutil.copytree(self.user_repo, target, dirs_exist_ok=True)
            return Step(name, "success", 0, notes=[f"{repository}: the user's repository copied into the workspace"])
        if repository not in self.repositories:
            return Step(name, "failure", 1, f"repository {repository!r} not found")
        commands = [["git", "clone", "--quiet", str(self.repositories[repository]), str(target)]]
        if inputs.get("ref"):
            commands.append(["git", "-C", str(target), "checkout", "--quiet", "--detach", inputs["ref"]])
        for argv in commands:
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                return Step(name, "failure", done.returncode, done.stdout + done.stderr)
        return Step(name, "success", 0, notes=[f"{repository} = git clone {self.repositories[repository]} at {inputs.get('ref')!r}"])


# --- GitLab CI -------------------------------------------------------------------------------------------

_GLOBAL_KEYS = {"stages", "variables", "default", "include", "workflow", "image", "services", "cache",
                "before_script", "after_script"}
_DEFAULT_KEYS = {"after_script", "artifacts", "before_script", "cache", "hooks", "id_tokens", "image",
                 "interruptible", "retry", "services", "tags", "timeout"}  # what GitLab allows under default:
_GITLAB_JOB_KEYS = {"stage", "script", "before_script", "extends", "artifacts", "when", "variables", "image",
                    "resource_group", "tags", "timeout", "interruptible"}
_NOT_EMULATED_JOB_KEYS = {"after_script", "needs", "dependencies", "rules", "only", "except", "allow_failure",
                          "cache", "services", "parallel", "trigger", "retry", "environment"}


def _merge(base: dict, override: dict) -> dict:
    """GitLab's `extends`: hashes merge deeply, anything else (lists, scalars) is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class GitLabRunner:
    def __init__(self, pipeline: Path, workdir: Path, *, user_repo: Path, project_variables: dict[str, str] | None = None,
                 file_variables: dict[str, str] | None = None, skip: Callable[[str], str | None] | None = None,
                 after: dict[str, Callable[[], None]] | None = None, python_bin: Path | None = None):
        self.document = yaml.safe_load(Path(pipeline).read_text())
        self.python_bin = python_bin
        self.workdir = Path(workdir)
        self.user_repo = Path(user_repo)
        self.project_variables = project_variables or {}
        self.file_variables = file_variables or {}
        self.skip = skip or (lambda command: None)
        self.after = dict(after or {})
        self.project_dirs: dict[str, Path] = {}

    def jobs(self) -> list[tuple[str, dict]]:
        """(name, resolved job) in the order GitLab runs them: stage order, file order within a stage."""
        document = self.document
        unknown_default = set(document.get("default") or {}) - _DEFAULT_KEYS
        if unknown_default:
            raise NotEmulated(f"default: {sorted(unknown_default)} — GitLab does not allow these under default:")
        stages = document.get("stages") or ["build", "test", "deploy"]

        def resolve(name: str, seen: tuple[str, ...] = ()) -> dict:
            if name in seen:
                raise NotEmulated(f"extends loop {seen}")
            job = document[name]
            parents = job.get("extends") or []
            resolved: dict = {}
            for parent in [parents] if isinstance(parents, str) else parents:
                resolved = _merge(resolved, resolve(parent, (*seen, name)))
            return _merge(resolved, {k: v for k, v in job.items() if k != "extends"})

        jobs = []
        for name, job in document.items():
            if name in _GLOBAL_KEYS or name.startswith(".") or not isinstance(job, dict):
                continue
            resolved = resolve(name)
            for key in resolved:
                if key in _NOT_EMULATED_JOB_KEYS or key not in _GITLAB_JOB_KEYS:
                    raise NotEmulated(f"job {name}: {key}")
            if resolved.get("stage", "test") not in stages:
                raise NotEmulated(f"job {name}: stage {resolved.get('stage')!r} not in stages")
            if resolved.get("when", "on_success") not in ("on_success", "always", "on_failure"):
                raise NotEmulated(f"job {name}: when {resolved['when']}")
            jobs.append((name, resolved))
        return sorted(jobs, key=lambda item: stages.index(item[1].get("stage", "test")))

    def run(self) -> Result:
        jobs = self.jobs()
        _hooks_name_steps(self.after, [name for name, _ in jobs])
        python_bin = self.python_bin or runner_python(self.workdir / "python")
        default = self.document.get("default") or {}
        steps: list[Step] = []
        done: list[tuple[str, dict, str]] = []  # (name, job, status)
        failed = False
        for name, job in jobs:
            when = job.get("when", "on_success")
            if (when == "on_success" and failed) or (when == "on_failure" and not failed):
                steps.append(Step(name, "skipped"))
                continue
            began = time.monotonic()
            step = self._job(name, job, default, python_bin, done)
            step.seconds = time.monotonic() - began
            steps.append(step)
            done.append((name, job, step.status))
            if step.status == "failure":
                failed = True
            elif name in self.after:
                self.after.pop(name)()
        return Result(steps, self.workdir)

    def _job(self, name: str, job: dict, default: dict, python_bin: Path, done: list[tuple[str, dict, str]]) -> Step:
        root = self.workdir / "jobs" / name
        project = root / "project"
        self.project_dirs[name] = project
        shutil.copytree(self.user_repo, project)
        notes = []
        for earlier, earlier_job, status in done:  # artifacts of earlier stages' jobs
            artifacts = earlier_job.get("artifacts") or {}
            upload = artifacts.get("when", "on_success")
            if upload == "always" or (upload == "on_success") == (status == "success"):
                copied = _copy_paths(artifacts.get("paths") or [], self.project_dirs[earlier], project)
                notes += [f"artifact {earlier}:{c}" for c in copied]
        home, tmp = root / "home", Path(f"{project}.tmp")
        home.mkdir(), tmp.mkdir()
        env = base_env(home, python_bin)
        env.update(GITLAB_CI="true", CI_PROJECT_DIR=str(project), CI_JOB_NAME=name, CI_JOB_STAGE=str(job.get("stage")))
        variables = {**(self.document.get("variables") or {}), **(job.get("variables") or {}), **self.project_variables}
        if any(isinstance(v, dict) for v in variables.values()):
            raise NotEmulated(f"job {name}: variables with value/description/options")
        env.update({k: str(v) for k, v in variables.items()})
        for key, content in self.file_variables.items():
            path = tmp / key
            path.write_text(content)
            path.chmod(0o600)
            env[key] = str(path)
        commands = [*(job.get("before_script", default.get("before_script")) or []), *job["script"]]
        lines = ["set -eo pipefail"]
        for command in commands:
            reason = self.skip(command)
            if reason:
                notes.append(f"not run ({reason}): {command.strip()}")
                continue
            lines.append(command.rstrip("\n"))
        code, output = _run_shell(["bash", "--noprofile", "--norc"], "\n".join(lines) + "\n", root / "job.sh", project, env)
        return Step(name, "success" if code == 0 else "failure", code, output, notes=notes)
