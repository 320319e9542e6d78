"""Talking to AWS: boto3 clients built the SDK way, one-line errors, the region, retries, pagination.

Every AWS call of the part goes through `AwsGateway.call` (botocore's failures become an `AwsError` or a
`UsageError`, exit 2, for bad set-up; an endpoint that cannot be reached, or retries used up, an
`IncompleteError`, exit 3). Retries are botocore's own: AWS_MAX_ATTEMPTS / AWS_RETRY_MODE and the profile's
max_attempts / retry_mode when set, else `DEFAULT_RETRIES`. A call slower than `SLOW_CALL_SECONDS` says so
on stderr, once per attempt (`aws.progress`). boto3 and botocore are imported on first use, never at import time.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Callable

from rbacbridge.config import Config
from rbacbridge.errors import IncompleteError, RbacbridgeError, UsageError, one_line, redact, shown

# Associations are independent per instance: this many run at once (each with its own retries).
ASSOCIATION_WORKERS = 16


_DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess")


class AwsError(RbacbridgeError):
    def __init__(self, operation: str, code: str, message: str, service: str = ""):
        self.operation = operation
        self.code = code
        self.service = service
        self.denied = code in _DENIED
        if self.denied:
            action = f"{service}:{_camel(operation)}" if service else _camel(operation)
            message = (f"the credentials in use may not call {action} (`rbacbridge permissions` prints the policy "
                       f"rbacbridge needs); AWS said: {one_line(message, 120)}")
        super().__init__(f"AWS {operation}: {code}: {one_line(message, 200)}")


def _camel(operation: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in operation.split("_"))


RETRY_MODES = ("legacy", "standard", "adaptive")
DEFAULT_REGION = "us-east-1"
# When neither the environment nor the profile says how to retry: IAM throttles bursts (setup on many
# instances), so more attempts than botocore's 3. AWS_MAX_ATTEMPTS=1 turns retrying off.
DEFAULT_RETRIES = {"mode": "standard", "total_max_attempts": 10}
CONNECT_TIMEOUT = 10  # seconds per attempt to open a connection
READ_TIMEOUT = 60  # seconds per attempt to wait for an answer
_RETRY_SETTINGS = (("AWS_MAX_ATTEMPTS", "max_attempts"), ("AWS_RETRY_MODE", "retry_mode"))
# Error codes botocore retries as throttling or transient: still there after the last attempt, the call could
# not complete (exit 3), unlike an answer such as NoSuchEntity or AccessDenied.
_RETRIED_CODES = frozenset((
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "TransactionInProgressException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException", "RequestTimeout", "RequestTimeoutException", "InternalError", "InternalFailure",
    "ServiceUnavailable"))


def retries_set_by_user(profile_config: dict) -> list[str]:
    """Where the user set botocore's retry behaviour (environment, the profile), as botocore reads it."""
    found = [env for env, _ in _RETRY_SETTINGS if os.environ.get(env)]
    return found + [f"the profile's {key}" for _, key in _RETRY_SETTINGS if profile_config.get(key) not in (None, "")]


class _SetupErrors:
    """botocore's set-up failures (profile, config file, credentials, endpoint, retry mode) as
    one-line UsageErrors: they are bad input, found before anything is changed."""

    def __init__(self, profile: str | None = None, broad: bool = True):
        self.profile = profile
        self.broad = broad  # creating a session or client: any botocore error there is set-up

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        import botocore.exceptions as bex

        if isinstance(exc, bex.ProfileNotFound):
            name = exc.kwargs.get("profile") or self.profile or os.environ.get("AWS_PROFILE")
            raise UsageError(f"AWS profile {shown(name)} not found in the AWS config files "
                             f"({shown(os.environ.get('AWS_CONFIG_FILE', '~/.aws/config'))})") from None
        if isinstance(exc, bex.ConfigParseError):
            raise UsageError(f"cannot parse the AWS config file {shown(exc.kwargs.get('path', ''))}: not INI") from None
        if isinstance(exc, bex.PartialCredentialsError):
            raise UsageError(f"partial AWS credentials in {exc.kwargs.get('provider', 'the environment')}: "
                             f"{exc.kwargs.get('cred_var', 'a variable')} is missing") from None
        if isinstance(exc, bex.NoCredentialsError):
            raise UsageError("no AWS credentials found: set AWS_PROFILE / --profile, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
        if isinstance(exc, bex.InvalidRegionError):
            raise UsageError(f"invalid AWS region {shown(exc.kwargs.get('region_name', ''))}: not an AWS region name (like us-east-1)") from None
        if isinstance(exc, (bex.InvalidRetryModeError, bex.InvalidMaxRetryAttemptsError)):
            raise UsageError(f"invalid AWS retry setting: {one_line(str(exc), 160)}") from None
        if not self.broad:
            return False
        if isinstance(exc, bex.BotoCoreError) and not isinstance(exc, (bex.EndpointConnectionError, bex.ConnectionError)):
            raise UsageError(f"AWS set-up failed: {one_line(str(exc), 200)}") from None
        if isinstance(exc, ValueError) and "endpoint" in str(exc).lower():
            raise UsageError(f"invalid AWS endpoint: {one_line(str(exc), 160)}") from None
        return False


def check_environment() -> None:
    """The AWS_* variables botocore reads, checked the way flags are (one line, exit 2)."""
    from rbacbridge import config as config_module

    for name, value in sorted(os.environ.items()):
        if not value:
            continue
        if name == "AWS_ENDPOINT_URL" or name.startswith("AWS_ENDPOINT_URL_"):
            config_module.endpoint_url(name, value)
        elif name == "AWS_RETRY_MODE" and value not in RETRY_MODES:
            raise UsageError(f"invalid AWS_RETRY_MODE {shown(value)}: choose from {', '.join(RETRY_MODES)}")
        elif name == "AWS_MAX_ATTEMPTS" and not (value.isascii() and value.isdigit() and 1 <= int(value) <= 100):
            raise UsageError(f"invalid AWS_MAX_ATTEMPTS {shown(value)}: a whole number 1-100")


def resolve_region(config: Config) -> tuple[Config, str]:
    """The region the way the aws CLI finds it: --region, then aws.region in the config, then
    AWS_REGION, then AWS_DEFAULT_REGION, then the profile's region, then us-east-1.
    Returns the config with that region and where it came from."""
    from dataclasses import replace

    from rbacbridge import config as config_module

    check_environment()
    if "region" in config.explicit:
        return config, "--region / aws.region"
    found, source = None, None
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            found, source = config_module.region(name, os.environ[name]), name
            break
    if found is None:
        profile = config.profile or os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
        if profile or os.path.exists(os.path.expanduser(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"))):
            import botocore.session

            with _SetupErrors(profile):
                session = botocore.session.Session(profile=profile)
                value = session.get_scoped_config().get("region")
            if value:
                label = f"region of AWS profile {profile or 'default'}"
                found, source = config_module.region(label, value), label
    if found is None:
        found, source = DEFAULT_REGION, "default"
    return replace(config, region=found), source


class AwsGateway:
    """boto3 clients built the SDK way (profile, env, instance role; AWS_ENDPOINT_URL honoured)."""

    def __init__(self, config: Config, session: Any = None, progress: Callable[[str], None] | None = None):
        self.config = config
        self._session = session
        self._clients: dict[str, Any] = {}
        self._identity: dict[str, str] | None = None
        from rbacbridge.aws.progress import CallWatch

        self.watch = CallWatch(progress)

    @property
    def session(self):
        if self._session is None:
            import boto3

            with _SetupErrors(self.config.profile):
                self._session = boto3.Session(profile_name=self.config.profile, region_name=self.config.region)
        return self._session

    def client(self, service: str):
        if service not in self._clients:
            from botocore.config import Config as BotoConfig

            check_environment()
            with _SetupErrors(self.config.profile):
                user_set = retries_set_by_user(self.session._session.get_scoped_config())
            settings: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT,
                                        "max_pool_connections": ASSOCIATION_WORKERS + 4}
            if not user_set:
                settings["retries"] = dict(DEFAULT_RETRIES)
            kwargs: dict[str, Any] = {"region_name": self.config.region, "config": BotoConfig(**settings)}
            if self.config.endpoint_url:
                kwargs["endpoint_url"] = self.config.endpoint_url
            with _SetupErrors(self.config.profile):
                client = self.session.client(service, **kwargs)
            self.watch.attach(client)
            self._clients[service] = client
        return self._clients[service]

    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        """One API call; every botocore failure becomes a one-line AwsError or UsageError."""
        import botocore.exceptions as bex
        from botocore.parsers import ResponseParserError

        client = self.client(service)
        method = getattr(client, operation)
        call = self.watch.start(client, service, operation)
        try:
            with _SetupErrors(self.config.profile, broad=False):
                return method(**params)
        except bex.ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "Unknown")
            if code in _RETRIED_CODES:
                raise IncompleteError(f"AWS {call.what}: {code} after {call.attempts_text()}: "
                                      f"{one_line(error.get('Message', ''), 120)}{_RETRY_HINT}") from None
            raise AwsError(operation, code, error.get("Message", ""), service) from None
        except (bex.EndpointConnectionError, bex.ConnectionClosedError, bex.ReadTimeoutError) as exc:
            url = exc.kwargs.get("endpoint_url", "") or call.url
            reason = "no answer within the read timeout" if isinstance(exc, bex.ReadTimeoutError) else (
                "connection closed" if isinstance(exc, bex.ConnectionClosedError) else
                "connect timeout" if isinstance(exc, bex.ConnectTimeoutError) else _reason(exc))
            raise IncompleteError(f"cannot reach AWS at {shown(redact(url))} ({call.what}): {reason} after "
                                  f"{call.attempts_text()}{_RETRY_HINT}") from None
        except ResponseParserError:
            # moto answers some wrong calls with HTTP 500 and no error document.
            raise AwsError(operation, "InternalError", "the server answered with an unparseable error", service) from None
        except bex.BotoCoreError as exc:
            raise RbacbridgeError(f"AWS {operation}: {one_line(str(exc), 200)}") from None
        finally:
            self.watch.end(call)

    def get_or_none(self, service: str, operation: str, missing: tuple[str, ...], **params: Any) -> dict | None:
        try:
            return self.call(service, operation, **params)
        except AwsError as exc:
            if exc.code in missing:
                return None
            raise

    def identity(self) -> dict[str, str]:
        if self._identity is None:
            self._identity = self.call("sts", "get_caller_identity")
        return self._identity

    def account(self) -> str:
        return self.identity()["Account"]


_RETRY_HINT = " (AWS_MAX_ATTEMPTS / AWS_RETRY_MODE or the profile's max_attempts / retry_mode set the retries)"


def _reason(exc: Exception) -> str:
    """The socket's complaint in a few words (Connection refused, Name or service not known)."""
    text = str(getattr(exc, "kwargs", {}).get("error", "") or exc)
    for known in ("Connection refused", "Name or service not known", "Temporary failure in name resolution",
                  "No route to host", "Network is unreachable", "Connection reset by peer"):
        if known.lower() in text.lower():
            return known.lower()
    return "connection failed"


def gateway(ctx) -> AwsGateway:
    return ctx.gateway("aws", lambda: AwsGateway(ctx.config, progress=ctx.reporter.progress))


_EVENTUALLY_CONSISTENT = (
    ("InvalidParameterValue", "Invalid IAM Instance Profile"),
    ("InvalidParameterValue", "iamInstanceProfile"),
    ("MalformedPolicyDocument", "Invalid principal"),
)


def retry_eventual_consistency(action: Callable[[], Any], attempts: int = 8) -> Any:
    """IAM changes take seconds to reach EC2 and STS: a profile or principal created a moment ago
    can be rejected as invalid. Retry those (only those) with bounded exponential backoff."""
    base = float(os.environ.get("RBACBRIDGE_RETRY_BASE_SECONDS", "1.0"))
    for attempt in range(attempts):
        try:
            return action()
        except AwsError as exc:
            transient = any(exc.code == code and text in str(exc) for code, text in _EVENTUALLY_CONSISTENT)
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(min(base * 2**attempt, 20 * base) * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")


def _checked_account(ctx, gw: AwsGateway) -> str:
    account = gw.account()
    if ctx.config.account_id and ctx.config.account_id != account:
        raise UsageError(f"--account-id {ctx.config.account_id} does not match the credentials in use "
                         f"(account {account}): refusing to touch the wrong account")
    caller = gw.identity().get("Arn", "")
    wanted = ctx.config.partition.name
    if caller.startswith("arn:") and caller.split(":")[1] != wanted:
        raise UsageError(f"region {ctx.config.region} is in partition {wanted}, the credentials in use are in "
                         f"{caller.split(':')[1]}: set --region (or AWS_REGION) to a region of theirs")
    return account


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[n:n + size] for n in range(0, len(items), size)]


def _iam_list(gw: AwsGateway, operation: str, key: str, **params: Any) -> list:
    """Every item of a paginated IAM list (IsTruncated / Marker), each page through gw.call."""
    out: list = []
    marker = None
    while True:
        page = gw.call("iam", operation, **params, **({"Marker": marker} if marker else {}))
        out += page[key]
        if not page.get("IsTruncated"):
            return out
        marker = page["Marker"]


def _pages(gw: AwsGateway, service: str, operation: str, token: str, **params: Any):
    """Every page of a paginated read, each through gw.call (same error handling)."""
    while True:
        page = gw.call(service, operation, **params)
        yield page
        if not page.get(token):
            return
        params[token] = page[token]
