"""Running the probes: where a command runs (runners), how an AWS call is made there (backends), and
the identity / read / write / chain probes of every principal, concurrently. Also the AWS CLI check."""

from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Protocol

from rbacbridge import policy_eval as pe
from rbacbridge.errors import UsageError
from rbacbridge.config import grant_bucket
from rbacbridge.verify.expected import probe_key
from rbacbridge.verify.model import (ACCESS_DENIED, ANNOTATION, ASSUME_DENIED, CHAIN, CHAIN_SESSION, CLI_MISSING, ERROR, IDENTITY,
                                     INVALID_CREDENTIALS, NETWORK, NO_CREDENTIALS, NO_SUCH_BUCKET, READ, WRITE, CallResult,
                                     Observation, Observed, Principal)


class CommandRunner(Protocol):
    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]: ...


class LocalRunner:
    """Runs argv here (optionally behind a prefix such as `ip netns exec NS`)."""

    def __init__(self, prefix: list[str] | None = None, env: dict[str, str] | None = None):
        self.prefix = list(prefix or [])
        self.env = env

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        try:
            done = subprocess.run(self.prefix + list(argv), capture_output=True, text=True, timeout=timeout, env=self.env)
        except subprocess.TimeoutExpired:
            return 124, "", f"timed out after {timeout:g}s"
        except FileNotFoundError as exc:
            return 127, "", f"{exc.filename}: not found"
        return done.returncode, done.stdout, done.stderr


class SshRunner:
    """The host node over SSH (rbacbridge.nodes.ssh, imported lazily); one session shared by the probes.

    At most CHANNELS commands run at once on it: OpenSSH's sshd refuses more than MaxSessions (default 10)
    channels per connection ("ChannelException(2, 'Connect failed')"), which a host with many cells (tenants)
    reached with verify's 16 probe threads."""

    CHANNELS = 8

    def __init__(self, target: Any):
        import threading

        from rbacbridge.nodes.ssh import preflight

        preflight(target)  # a bad key or known_hosts is bad input (exit 2), found before any contact
        self.target = target
        self._session = None
        self._lock = threading.Lock()
        self._channels = threading.BoundedSemaphore(self.CHANNELS)

    def _connect(self):
        with self._lock:  # one connection, however many probe threads ask at once
            if self._session is None:
                from rbacbridge.nodes.ssh import connect

                self._session = connect(self.target)
            return self._session

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        session = self._connect()
        with self._channels:
            rc, out, err = session.run(argv, sudo=False, timeout=timeout)
        return rc, out, err

    def close(self) -> None:
        if self._session is not None and hasattr(self._session, "close"):
            self._session.close()


class KubeExecRunner:
    """Inside a pod through the Kubernetes exec API (rbacbridge.kube.KubeGateway.exec)."""

    def __init__(self, gateway: Any, namespace: str, pod: str, container: str | None = None):
        self.gateway, self.namespace, self.pod, self.container = gateway, namespace, pod, container

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        result = self.gateway.exec(self.namespace, self.pod, list(argv), container=self.container, timeout=int(timeout))
        return result.rc, result.stdout, result.stderr


_ERROR_CODE = re.compile(r"An error occurred \(([\w.]+)\) when calling the (\w+) operation")
_NETWORK_TEXT = ("Could not connect to the endpoint URL", "Connect timeout on endpoint URL", "Read timeout on endpoint URL",
                 "Connection was closed", "timed out", "EndpointConnectionError", "Name or service not known",
                 "Temporary failure in name resolution", "Connection refused")
_INVALID_CODES = {"InvalidClientTokenId", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
                  "UnrecognizedClientException", "InvalidToken"}


def classify(rc: int, stdout: str, stderr: str) -> CallResult:
    """One AWS CLI call's outcome: ok, or an error category with the CLI's own message."""
    if rc == 0:
        return CallResult(True, detail="ok", value=stdout)
    text = (stderr or stdout or "").strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), f"exit {rc}")
    match = _ERROR_CODE.search(text)
    if match:
        code, operation = match.groups()
        if code in ("AccessDenied", "AccessDeniedException", "Forbidden"):
            return CallResult(False, ASSUME_DENIED if operation == "AssumeRole" else ACCESS_DENIED, line)
        if code == "NoSuchBucket":
            return CallResult(False, NO_SUCH_BUCKET, line)
        if code in _INVALID_CODES:
            return CallResult(False, INVALID_CREDENTIALS, line)
        return CallResult(False, ERROR, line)
    if "Unable to locate credentials" in text or "NoCredentialsError" in text:
        return CallResult(False, NO_CREDENTIALS, line)
    if any(t in text for t in _NETWORK_TEXT) or rc == 124:
        return CallResult(False, NETWORK, line)
    if rc == 127 or re.search(r"\baws\b.*(not found|No such file)", text):
        return CallResult(False, CLI_MISSING, "the AWS CLI is not installed here (--install-cli installs it in pods)")
    return CallResult(False, ERROR, line)


class ProbeBackend(Protocol):
    def identity(self) -> CallResult: ...
    def list_bucket(self, bucket: str) -> CallResult: ...
    def put_object(self, bucket: str, key: str) -> CallResult: ...
    def delete_object(self, bucket: str, key: str) -> CallResult: ...
    def assume_role(self, role_arn: str) -> CallResult: ...  # value: the assumed-role ARN, never the credentials
    # Optional (annotation cells, the sandbox): would kube2iam hand this pod another role's credentials if it
    # were annotated with it; ok = handed out (value: the role ARN). Never returns the credentials. The live
    # runner does not use it: it starts probe pods annotated with the other role (verify.annotation_probe).
    # def request_role(self, role: str, role_arn: str) -> CallResult: ...


class AwsCliBackend:
    """The AWS CLI where the principal runs (node shell, pod), the way the article checks by hand."""

    def __init__(self, runner: CommandRunner, region: str, endpoint_url: str | None = None, timeout: float = 60):
        self.runner, self.region, self.endpoint_url, self.timeout = runner, region, endpoint_url, timeout

    def argv(self, *args: str) -> list[str]:
        # AWS_PAGER= keeps CLI v2 from starting a pager; `env` exists wherever a shell does.
        out = ["env", "AWS_PAGER=", "aws", *args, "--region", self.region, "--output", "json"]
        if self.endpoint_url:
            out += ["--endpoint-url", self.endpoint_url]
        return out

    def _call(self, *args: str) -> CallResult:
        try:
            rc, stdout, stderr = self.runner.run(self.argv(*args), self.timeout)
        except TimeoutError as exc:
            return CallResult(False, NETWORK, f"timed out: {exc}")
        except Exception as exc:  # noqa: BLE001 - a broken transport is an observation, not a crash
            return CallResult(False, NETWORK if "timeout" in str(exc).lower() else ERROR, f"{type(exc).__name__}: {exc}")
        return classify(rc, stdout, stderr)

    def identity(self) -> CallResult:
        result = self._call("sts", "get-caller-identity")
        if result.ok:
            try:
                result.value = json.loads(result.value)["Arn"]
            except (ValueError, KeyError, TypeError):
                return CallResult(False, ERROR, "get-caller-identity printed no Arn")
        return result

    def list_bucket(self, bucket: str) -> CallResult:
        return self._call("s3api", "list-objects-v2", "--bucket", bucket, "--max-items", "1")

    def put_object(self, bucket: str, key: str) -> CallResult:
        return self._call("s3api", "put-object", "--bucket", bucket, "--key", key)

    def delete_object(self, bucket: str, key: str) -> CallResult:
        return self._call("s3api", "delete-object", "--bucket", bucket, "--key", key)

    def assume_role(self, role_arn: str) -> CallResult:
        # --query keeps the credentials inside the principal: only the assumed-role ARN crosses the
        # exec channel (no secret is ever printed or logged).
        result = self._call("sts", "assume-role", "--role-arn", role_arn, "--role-session-name", CHAIN_SESSION,
                            "--query", "AssumedRoleUser.Arn")
        if result.ok:
            try:
                result.value = json.loads(result.value)
            except (ValueError, TypeError):
                return CallResult(True, detail="ok", value=None)
        return result


class UnavailableBackend:
    """A principal that has no credentials at all: every call answers the same error."""

    def __init__(self, category: str, detail: str):
        self.result = CallResult(False, category, detail)

    def identity(self) -> CallResult:
        return self.result

    def list_bucket(self, bucket: str) -> CallResult:
        return self.result

    def put_object(self, bucket: str, key: str) -> CallResult:
        return self.result

    def delete_object(self, bucket: str, key: str) -> CallResult:
        return self.result

    def assume_role(self, role_arn: str) -> CallResult:
        return self.result


# An object cannot exist after a put that failed for these reasons; any other failure (a timeout,
# a dropped connection) may have written it, so the delete runs.
_NOT_WRITTEN = (ACCESS_DENIED, NO_SUCH_BUCKET, NO_CREDENTIALS, ASSUME_DENIED, INVALID_CREDENTIALS, CLI_MISSING)

def probe_read(backend: ProbeBackend, bucket: str) -> Observation:
    result = backend.list_bucket(bucket)
    return Observation(_allowed(result), result)


def probe_write(backend: ProbeBackend, bucket: str, key: str) -> Observation:
    put: CallResult | None = None
    delete: CallResult | None = None
    try:
        put = backend.put_object(bucket, key)
    finally:
        if put is None or put.ok or put.category not in _NOT_WRITTEN:
            delete = backend.delete_object(bucket, key)
    if not put.ok:
        return Observation(_allowed(put), put, key, left_behind=bool(delete and not delete.ok and put.category not in _NOT_WRITTEN))
    if delete is not None and not delete.ok:
        detail = f"put allowed but delete failed ({delete.detail}); probe object s3://{bucket}/{key} left behind"
        return Observation(None, CallResult(False, delete.category, detail), key, left_behind=True)
    return Observation(True, put, key)


def _allowed(result: CallResult) -> bool | None:
    if result.ok:
        return True
    if result.category in (ACCESS_DENIED, NO_CREDENTIALS, ASSUME_DENIED, INVALID_CREDENTIALS):
        return False
    return None


def probe_chain(backend: ProbeBackend, role_arn: str) -> Observation:
    """The principal itself calls sts:AssumeRole on the role (granted = an escalation path)."""
    assume = getattr(backend, "assume_role", None)
    if assume is None:
        return Observation(None, CallResult(False, ERROR, "this probe cannot call sts:AssumeRole"))
    result = assume(role_arn)
    return Observation(_allowed(result), result)


def probe_annotation(backend: ProbeBackend, role: str, role_arn: str) -> Observation:
    """Would a pod annotated with another tenant's role get it (backend.request_role)? handed out = True."""
    result = backend.request_role(role, role_arn)
    return Observation(_allowed(result), result)


def can_request_roles(backend: ProbeBackend) -> bool:
    """Does this backend implement the annotation probe (request_role)? The sandbox's pods do; the live runner
    observes annotation cells with probe pods instead (verify.annotation_probe, docs/verify.md "annotation cells")."""
    return callable(getattr(backend, "request_role", None))


def workload_of(principal: Principal) -> tuple[Any, ...]:
    """What a principal is apart from the node it runs on: the host, or a workload's pods (namespace, name,
    configured annotation). Pods of one workload on different nodes share it."""
    return (principal.kind, principal.namespace, principal.role_annotation, principal.host_network, principal.name.split("@")[0])


def observe(targets: list[tuple[Principal, ProbeBackend]], buckets: list[str], max_workers: int = 16,
            chains: dict[str, list[tuple[str, str]]] | None = None,
            annotations: dict[str, list[tuple[str, str]]] | None = None, share: bool = True) -> list[Observed]:
    """Every identity, read, write, chain and annotation probe of every principal, concurrently.

    `buckets`: locations, "bucket" or "bucket/prefix/*" (a write probe puts its object under the prefix).
    `chains`: principal name -> [(target role, its ARN)] to try sts:AssumeRole on.
    `annotations`: principal name -> [(other tenant's role, its ARN)] to ask kube2iam for.

    `share` (verify's default): what depends on the node is probed for every principal — the identity it
    gets there, and the annotation cells (kube2iam on that node decides them). The bucket and chain cells,
    which IAM decides from the role's policies, the bucket's and the target's trust alone, are probed once
    per workload and OBSERVED role: the first principal of a workload probes them at once (alongside the
    identities), every other principal of that workload copies them only if its own identity call returned
    that same role, else (another role, or no credentials on either side) it probes its own. Copies name the
    principal that probed them (`Observation.probed_by`). If the first could not tell a cell (an error, a
    timeout), the others probe all their own cells afterwards: only decided observations are shared."""
    jobs: dict[tuple[str, str, str | None], Any] = {}
    chains, annotations = chains or {}, annotations or {}

    def submit_cells(pool: ThreadPoolExecutor, principal: Principal, backend: ProbeBackend) -> None:
        for location in buckets:
            bucket = grant_bucket(location)
            jobs[(principal.name, READ, location)] = pool.submit(probe_read, backend, bucket)
            jobs[(principal.name, WRITE, location)] = pool.submit(probe_write, backend, bucket, probe_key(principal.name, location))
        for target, arn in chains.get(principal.name, []):
            jobs[(principal.name, CHAIN, target)] = pool.submit(probe_chain, backend, arn)

    probed_by: dict[str, str] = {}  # principal name -> the principal whose bucket and chain cells it copies
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rbv-probe") as pool:
        first: dict[tuple[Any, ...], list[Principal]] = {}  # workload -> principals probing their own cells
        for principal, backend in targets:
            jobs[(principal.name, IDENTITY, None)] = pool.submit(_guard, backend.identity)
            if can_request_roles(backend):
                for target, arn in annotations.get(principal.name, []):
                    jobs[(principal.name, ANNOTATION, target)] = pool.submit(probe_annotation, backend, target, arn)
        for principal, backend in targets:
            if not share or workload_of(principal) not in first:
                first.setdefault(workload_of(principal), []).append(principal)
                submit_cells(pool, principal, backend)
        if share:
            def role_of(name: str) -> str | None:
                ident = jobs[(name, IDENTITY, None)].result()
                return pe.role_name_of(ident.value) if ident.ok and ident.value else None

            for principal, backend in targets:
                probers = first[workload_of(principal)]
                if principal in probers:
                    continue
                role = role_of(principal.name)
                same = next((p for p in probers if role is not None and role_of(p.name) == role), None)
                if same is None:
                    probers.append(principal)
                    submit_cells(pool, principal, backend)
                else:
                    probed_by[principal.name] = same.name

    def undecided(source: str) -> bool:  # a cell the first could not tell (an error, a timeout) is not shared
        return any(_outcome(future).allowed is None for (name, check, _), future in jobs.items()
                   if name == source and check in (READ, WRITE, CHAIN))

    again = [(p, b) for p, b in targets if p.name in probed_by and undecided(probed_by[p.name])]
    if again:
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rbv-probe") as pool:
            for principal, backend in again:
                del probed_by[principal.name]
                submit_cells(pool, principal, backend)
    out = []
    for principal, _ in targets:
        ident = jobs[(principal.name, IDENTITY, None)].result()
        source = probed_by.get(principal.name, principal.name)
        cells = {(loc, op): _copy(_outcome(jobs[(source, op, loc)]), source, principal.name) for loc in buckets for op in (READ, WRITE)}
        chained = {}
        for target, _ in chains.get(principal.name, []):
            future = jobs.get((source, CHAIN, target))
            chained[target] = _copy(_outcome(future), source, principal.name) if future else \
                Observation(None, CallResult(False, ERROR, "not probed"))
        asked = {target: _outcome(jobs[(principal.name, ANNOTATION, target)]) for target, _ in annotations.get(principal.name, [])
                 if (principal.name, ANNOTATION, target) in jobs}
        arn = ident.value if ident.ok else None
        out.append(Observed(principal, ident, arn, pe.role_name_of(arn) if arn else None, cells, chained, asked))
    return out


def _outcome(future: Any) -> Observation:
    exc = future.exception()
    return future.result() if exc is None else Observation(None, CallResult(False, ERROR, f"{type(exc).__name__}: {exc}"))


def _copy(seen: Observation, source: str, name: str) -> Observation:
    """The observation as `name` reports it: its own, or a copy of `source`'s (left-behind objects counted once)."""
    if source == name:
        return seen
    return Observation(seen.allowed, seen.result, seen.key, left_behind=False, probed_by=source)


def _guard(call: Callable[[], CallResult]) -> CallResult:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001
        return CallResult(False, ERROR, f"{type(exc).__name__}: {exc}")

# Article step 9, replayed by --install-cli in a pod without the AWS CLI (a fixed script: no input).
INSTALL_CLI_SCRIPT = (
    "set -e; command -v aws >/dev/null 2>&1 && exit 0; "
    "apt-get update -qq && apt-get install -y -qq curl unzip >/dev/null; "
    "cd /tmp && curl -sSfL https://awscli.amazonaws.com/awscli-exe-linux-x86_64.zip -o awscliv2.zip "
    "&& unzip -q -o awscliv2.zip && ./aws/install --update"
)


CLI_CHECK = ["sh", "-c", "command -v aws"]  # a shell builtin: milliseconds, where `aws --version` starts Python


def ensure_cli(runner: CommandRunner, install: bool, where: str, timeout: float = 600) -> None:
    rc, _, err = runner.run(CLI_CHECK, 30)
    if rc != 0 and rc != 1:  # no `sh` (distroless image): ask the CLI itself
        rc, _, err = runner.run(["aws", "--version"], 30)
    if rc == 0:
        return
    if not install:
        raise UsageError(f"no AWS CLI in {where} ({(err or '').strip()[:80] or f'exit {rc}'}); "
                         "re-run with --install-cli (article step 9) or --probe ephemeral")
    rc, _, err = runner.run(["sh", "-c", INSTALL_CLI_SCRIPT], timeout)
    if rc != 0:
        from rbacbridge.errors import RbacbridgeError

        raise RbacbridgeError(f"installing the AWS CLI in {where} failed: {(err or '').strip().splitlines()[-1:] or rc}")


def ensure_cli_all(checks: list[tuple[CommandRunner, bool, str]], max_workers: int = 16) -> None:
    """ensure_cli for every principal at once (one cheap check each, concurrently); the first failure wins."""
    if not checks:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(checks))), thread_name_prefix="rbv-cli") as pool:
        futures = [pool.submit(ensure_cli, runner, install, where) for runner, install, where in checks]
    for future in futures:
        future.result()

