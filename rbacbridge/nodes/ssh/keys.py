"""The private key a node is reached with: it must load without a passphrase (rbacbridge never prompts),
or be encrypted and held by the local ssh-agent."""

from __future__ import annotations

import os
import re

from rbacbridge.errors import UsageError
from rbacbridge.nodes.ssh.errors import one_line, short
from rbacbridge.nodes.ssh.files import cached

_PUBLIC_KEY = re.compile(r"^(ssh-|ecdsa-|sk-ssh-|sk-ecdsa-)[\w@.-]+ AAAA[0-9A-Za-z+/=]+")


def _in_agent(path: str) -> bool:
    """Does the local ssh-agent (SSH_AUTH_SOCK) hold the key whose public half is PATH.pub?"""
    import base64

    import paramiko

    try:
        with open(path + ".pub", encoding="ascii") as handle:
            blob = base64.b64decode(handle.read().split()[1])
    except (OSError, IndexError, ValueError):
        return False
    if not os.environ.get("SSH_AUTH_SOCK"):
        return False
    agent = paramiko.Agent()
    try:
        return any(key.asbytes() == blob for key in agent.get_keys())
    finally:
        agent.close()


def check_key_file(path: str) -> bool:
    """The private key must load without a passphrase (rbacbridge never prompts), or be encrypted and
    held by the local ssh-agent (then True: use the agent, as OpenSSH does); else UsageError.
    Checked once per version of the file (every node names the same key)."""
    return cached("key", path, _check_key_file)


def _check_key_file(path: str) -> bool:
    import paramiko

    shown = short(path, 120)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except FileNotFoundError:
        raise UsageError(f"SSH key {shown} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read SSH key {shown}: {one_line(exc)}") from None
    text = head.decode("ascii", "replace").strip()
    if _PUBLIC_KEY.match(text):
        hint = f" (the private key is usually {path[:-4]!r})" if path.endswith(".pub") else ""
        raise UsageError(f"SSH key {shown} is a public key; give the private key{hint}")
    if text.startswith("PuTTY-User-Key-File"):
        raise UsageError(f"SSH key {shown} is a PuTTY key; convert it: puttygen KEY -O private-openssh -o KEY.pem")
    try:
        paramiko.PKey.from_path(path)
    except (TypeError, paramiko.PasswordRequiredException):
        if _in_agent(path):
            return True
        raise UsageError(f"SSH key {shown} is encrypted and rbacbridge does not ask for passphrases: "
                         "load it into ssh-agent (ssh-add, with its .pub beside it) or give an unencrypted key") from None
    except OSError as exc:
        raise UsageError(f"cannot read SSH key {shown}: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - anything else: not a key paramiko can use
        reason = "unsupported key type" if type(exc).__name__ == "UnknownKeyType" else "not a private key in a format paramiko reads"
        raise UsageError(f"SSH key {shown}: {reason} (OpenSSH or PEM ed25519, ecdsa or rsa)") from None
    return False
