"""ProxyCommand, run as OpenSSH runs it (`/bin/sh -c "exec COMMAND"`), its stdin/stdout carrying the SSH
session (the command's tokens were expanded from validated parts by rbacbridge.nodes.ssh.target)."""

from __future__ import annotations

import os
import select
import socket

from rbacbridge.nodes.ssh.errors import SshError, one_line
from rbacbridge.nodes.ssh.target import SshTarget


def _proxy_command_class():
    import paramiko

    class ProxyCommand(paramiko.ProxyCommand):
        """paramiko's ProxyCommand, started as OpenSSH does (`sh -c "exec CMD"`), its stderr kept in a
        file (never a pipe nobody reads) for the error message, and reaped on close."""

        def __init__(self, command: str, target: SshTarget):
            import subprocess
            import tempfile

            self.cmd = ["/bin/sh", "-c", "exec " + command]
            self.stderr_file = tempfile.TemporaryFile()
            try:
                self.process = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=self.stderr_file, bufsize=0, start_new_session=True)
            except OSError as exc:
                self.stderr_file.close()
                raise SshError(f"{target.name}: cannot start ProxyCommand: {one_line(exc)}") from None
            self.timeout = None
            self.command = command

        def recv(self, size: int) -> bytes:
            # Like a socket: whatever is there (b"" at end of file). paramiko's own loops on EOF until
            # its timeout, so a proxy that died would cost the whole connect timeout.
            try:
                ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
                if not ready:
                    raise socket.timeout()
                return os.read(self.process.stdout.fileno(), size)
            except socket.timeout:
                raise
            except (OSError, ValueError) as exc:
                raise paramiko.ProxyCommandFailure(self.command, getattr(exc, "strerror", None) or str(exc)) from None

        def stderr_tail(self) -> str:
            try:
                self.stderr_file.seek(0)
                lines = [l.strip() for l in self.stderr_file.read().decode("utf-8", "replace").splitlines() if l.strip()]
            except (OSError, ValueError):
                return ""
            return lines[-1][:200] if lines else ""

        def close(self) -> None:
            import subprocess

            if self.process.poll() is None:
                try:
                    self.process.terminate()
                    self.process.wait(timeout=5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    self.process.kill()
                    self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            # stderr_file stays readable for the error message; it goes with the object

    return ProxyCommand


def start_proxy_command(command: str, target: SshTarget):
    """The ProxyCommand's process, as a socket for paramiko (its class is made lazily: paramiko is imported late)."""
    return _proxy_command_class()(command, target)
