"""--probe-from rbacbridge's one exec per pod (issue 25): what the pod's metadata path hands it, and one cell
probed in the pod, in one `sh -c` that runs two processes in the common path.

The script asks the metadata path (169.254.169.254, which kube2iam intercepts for pods) which role it names and
that role's temporary credentials — ONE curl fetching both — then the shell replaces itself with the spot-checked
cell's AWS CLI call (`exec`), so the exec's exit code and stderr are that call's. Nothing from the configuration
or the cluster is interpolated into the script: the role name to ask for (validated) and the CLI call are
arguments. Fallbacks where curl is missing: wget (one process per fetch), then the CLI's own
`aws configure export-credentials` (CLI v2).

The credentials stay in this process's memory (PodCredentials hides them from repr); an answer that is not a
credentials document is described by its status only, never quoted."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from rbacbridge.config import grant_bucket
from rbacbridge.verify.model import CLI_MISSING, CallResult, Observation
from rbacbridge.verify.probes import AwsCliBackend, ProbeBackend, _allowed, classify

EXPIRY_MARGIN = timedelta(seconds=60)
METADATA_CREDENTIALS = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
METADATA_TOKEN = "http://169.254.169.254/latest/api/token"
META_MARK, END_MARK, SPOT_MARK = "--rbv-meta--", "--rbv-end--", "--rbv-spot--"
# Never an empty argument (a Kubernetes exec may drop it): "-" stands for none.
# $1: the role name to ask for ("-" = only ask which role the path names); $2: "v2" = first ask for an IMDSv2
# session token (the host node and hostNetwork pods reach EC2's own metadata service, which may require one; a
# pod's kube2iam path answers IMDSv1, and EC2's hop limit would make a pod's token request wait); the rest: the spot-checked cell's AWS
# CLI call (AwsCliBackend.argv: `env AWS_PAGER= aws ...`, env execs aws in the same process), or nothing. Each
# fetch's answer ends with a line END_MARK and its HTTP status (curl; 000 = no answer), wget's exit code (wN)
# or export-credentials' (xN). No subshell, no pipe: `command -v` and `[` are builtins.
ONE_EXEC_SCRIPT = (
    f"h=$1; t=$2; shift 2; [ \"$h\" != - ] || h=; [ \"$t\" != - ] || t=; u={METADATA_CREDENTIALS}; echo {META_MARK}; "
    "if command -v curl >/dev/null 2>&1; then "
    f"w='\\n{END_MARK} %{{http_code}}\\n'; "
    f'[ -z "$t" ] || t=$(curl -s --max-time 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" {METADATA_TOKEN}); '
    'if [ -n "$h" ]; then curl -s --max-time 10 ${t:+-H} ${t:+"X-aws-ec2-metadata-token: $t"} -w "$w" "$u" "$u$h"; '
    'else curl -s --max-time 10 ${t:+-H} ${t:+"X-aws-ec2-metadata-token: $t"} -w "$w" "$u"; fi; '
    "elif command -v wget >/dev/null 2>&1; then "
    f'wget -q -T 10 -O - "$u"; echo; echo "{END_MARK} w$?"; '
    f'if [ -n "$h" ]; then wget -q -T 10 -O - "$u$h"; echo; echo "{END_MARK} w$?"; fi; '
    "else "
    f'AWS_PAGER= aws configure export-credentials --format process 2>/dev/null; echo; echo "{END_MARK} x$?"; '
    "fi; "
    f'echo {SPOT_MARK}; [ $# -gt 0 ] || exit 0; exec "$@"'
)
_SECTION = re.compile(rf"(.*?)\n?{END_MARK} (\S+)\n", re.S)
ROLE_NAME = re.compile(r"[\w+=,.@-]{1,64}")


@dataclass(frozen=True)
class PodCredentials:
    """Temporary credentials a pod received. repr/str never show them (an exception or log line cannot leak them)."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    expiration: datetime | None = None

    def usable(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(timezone.utc)
        return self.expiration is None or self.expiration - EXPIRY_MARGIN > now

    def for_boto3(self) -> dict[str, str]:
        out = {"aws_access_key_id": self.access_key, "aws_secret_access_key": self.secret_key}
        if self.token:
            out["aws_session_token"] = self.token
        return out


def parse_credentials(text: str) -> PodCredentials | None:
    """The metadata service's document (Token) or `aws configure export-credentials --format process`'s
    (SessionToken); None if it is neither (never quoted: it may hold a secret)."""
    try:
        doc = json.loads(text)
        access, secret = doc["AccessKeyId"], doc["SecretAccessKey"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(access, str) or not isinstance(secret, str) or not access or not secret:
        return None
    expiration = None
    if doc.get("Expiration"):
        try:
            expiration = datetime.fromisoformat(str(doc["Expiration"]).replace("Z", "+00:00"))
            if expiration.tzinfo is None:
                expiration = expiration.replace(tzinfo=timezone.utc)
        except ValueError:
            return None
    return PodCredentials(access, secret, doc.get("Token") or doc.get("SessionToken"), expiration)


@dataclass
class Fetched:
    """What one exec saw: the role the metadata path names (None: no answer), the credentials it handed out
    (None: none; `why` says why, never quoting a document), the spot-checked cell as the pod saw it (None: not
    asked, or not answered), and whether the pod has no AWS CLI for it. `identity`: the sandbox's pods, which
    observe their identity their own way."""

    listed: str | None = None
    creds: PodCredentials | None = field(default=None, repr=False)
    why: str | None = None
    spot: Observation | None = None
    cli_missing: bool = False
    identity: CallResult | None = None


def spot_argv(backend: AwsCliBackend, location: str) -> list[str]:
    """The spot-checked cell (a read: list-objects-v2, as verify.probes.probe_read) as the pod's CLI call."""
    return backend.argv("s3api", "list-objects-v2", "--bucket", grant_bucket(location), "--max-items", "1")


def one_exec(backend: ProbeBackend, hint: str | None, location: str | None, token: bool = False) -> Fetched | None:
    """The one exec where a principal runs (a pod; the host node over SSH or in a hostNetwork pod): asks its metadata
    path for role `hint` (the role it should get, from the configuration; only a question — the answer is what the
    path hands out) and, if `location`, probes that read cell with its own CLI. `token`: IMDSv2 first (the node's own
    metadata service). None: a principal this cannot run in (the sandbox's host: probed there)."""
    own = getattr(backend, "pod_credentials", None)  # the sandbox's pods
    if callable(own):
        ident, creds, why = own()
        return Fetched(None, creds, why, identity=ident)
    if not isinstance(backend, AwsCliBackend):
        return None
    hint = hint if hint and ROLE_NAME.fullmatch(hint) and hint != "-" else ""
    argv = ["sh", "-c", ONE_EXEC_SCRIPT, "rbacbridge-verify", hint or "-", "v2" if token else "-",
            *(spot_argv(backend, location) if location else [])]
    try:
        rc, stdout, stderr = backend.runner.run(argv, backend.timeout)
    except Exception as exc:  # noqa: BLE001 - a broken transport is an observation (never the output: it may hold a secret)
        return Fetched(why=f"the exec failed ({'timeout' if 'timeout' in str(exc).lower() else type(exc).__name__})")
    fetched = parse_exec(rc, stdout or "", stderr or "", hint, location is not None)
    if fetched.listed and fetched.creds is None and fetched.listed != hint:  # the path names another role: ask for it
        fetched.creds, fetched.why = _fetch_named(backend, fetched.listed, token)
    return fetched


def parse_exec(rc: int, stdout: str, stderr: str, hint: str, spot_asked: bool) -> Fetched:
    if META_MARK + "\n" not in stdout:  # no shell ran it (a distroless image): the pod is probed the old way
        first = next((ln.strip() for ln in stderr.splitlines() if ln.strip()), f"exit {rc}")
        return Fetched(why=f"the exec ran no shell ({first[:120]})")
    meta, found, spot_out = stdout.split(META_MARK + "\n", 1)[1].partition(SPOT_MARK + "\n")
    sections = _SECTION.findall(meta)
    out = Fetched()
    if sections and sections[0][1].startswith("x"):  # aws configure export-credentials: credentials, no listing
        out.creds, out.why = _credentials(*sections[0])
    elif sections:
        body, status = sections[0]
        name = body.strip() if _ok(status) else ""
        out.listed = name if ROLE_NAME.fullmatch(name) else None
        if out.listed is None:
            out.why = f"the metadata path named no role ({_status(body, status)})"
        elif len(sections) > 1 and out.listed == hint:
            out.creds, out.why = _credentials(*sections[1])
    else:
        out.why = "the metadata path gave no answer"
    if spot_asked and found:
        result = classify(rc, spot_out, stderr)
        out.cli_missing = result.category == CLI_MISSING
        out.spot = None if out.cli_missing else Observation(_allowed(result), result)
    return out


def _fetch_named(backend: AwsCliBackend, role: str, token: bool) -> tuple[PodCredentials | None, str | None]:
    """A second exec, only when the path names a role other than the one asked for: that role's credentials."""
    argv = ["sh", "-c", ONE_EXEC_SCRIPT, "rbacbridge-verify", role, "v2" if token else "-"]
    try:
        rc, stdout, stderr = backend.runner.run(argv, backend.timeout)
    except Exception as exc:  # noqa: BLE001
        return None, f"the exec failed ({type(exc).__name__})"
    again = parse_exec(rc, stdout or "", stderr or "", role, False)
    if again.listed != role:
        return None, again.why or f"the metadata path named {again.listed} and then {role}"
    return again.creds, again.why


def _ok(status: str) -> bool:
    return status in ("200", "w0", "x0")


def _status(body: str, status: str) -> str:
    """A failed fetch in words: its status and, for an HTTP error, the first line of the error's body (an error
    body is not a credentials document)."""
    if status == "000":
        return "no answer: connection failed or timed out"
    if status.startswith("w"):
        return f"wget exit {status[1:]}" + (": no answer" if status == "w4" else "")
    if status.startswith("x"):
        return f"aws configure export-credentials exit {status[1:]}"
    first = next((ln.strip() for ln in body.splitlines() if ln.strip()), "")
    return f"HTTP {status}" + (f": {first[:120]}" if first and not status.startswith("2") else "")


def _credentials(body: str, status: str) -> tuple[PodCredentials | None, str | None]:
    if not _ok(status):
        return None, f"the metadata path handed out no credentials ({_status(body, status)})"
    creds = parse_credentials(body.strip())
    return (creds, None) if creds else (None, "the metadata path's answer is no credentials document")


__all__ = ["EXPIRY_MARGIN", "Fetched", "ONE_EXEC_SCRIPT", "PodCredentials", "one_exec", "parse_credentials", "parse_exec",
           "spot_argv"]
