"""The process around the app: argv in, one error line and an exit code out (rbacbridge.errors), for every
failure; Ctrl-C and SIGTERM end a run the same way (exit 130) after deleting what it created."""

from __future__ import annotations

import os
import sys

import typer

from rbacbridge.cli.app import app
from rbacbridge.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Interrupted, RbacbridgeError, one_line


def main() -> None:
    """Run the CLI: one line on stderr and an exit code from rbacbridge.errors for every failure."""
    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("RBACBRIDGE_DEBUG") == "1"
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
    _handle_signals()
    try:
        code = _run(argv, debug)
    except KeyboardInterrupt:
        code = interrupted()
    _exit(code)


def _handle_signals() -> None:
    """SIGTERM (a CI job cancelled, `kill`, a pod stopped) is handled like Ctrl-C: the same KeyboardInterrupt,
    so the same `finally` blocks delete what the run created, the same line and exit code 130. Both also set
    rbacbridge.cleanup's stop flag, which ends worker threads' waits and new creations at once. A signal the
    process inherited as ignored (nohup, a background job) stays ignored."""
    import signal

    from rbacbridge import cleanup

    cleanup.reset()
    _interrupt_said.clear()

    def interrupt(signum, frame):
        cleanup.stop()
        _watchdog()
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt)


INTERRUPT_GRACE = 5.0  # seconds the unwinding may take after Ctrl-C / SIGTERM before the watchdog ends the run
_interrupt_said = []


def _watchdog() -> None:
    """After the first Ctrl-C / SIGTERM: if the process has not exited INTERRUPT_GRACE seconds later (the main
    thread joining a worker stuck in a node command, say), delete what the run created, say so, exit 130."""
    import threading

    if getattr(_watchdog, "started", False):
        return
    _watchdog.started = True  # type: ignore[attr-defined]

    def run() -> None:
        import time

        from rbacbridge import cleanup

        time.sleep(INTERRUPT_GRACE)
        cleanup.undo_all()
        if not _interrupt_said:
            _error_line(cleanup.interrupt_line())
        os._exit(EXIT_INTERRUPTED)

    threading.Thread(target=run, name="rbacbridge-interrupted", daemon=True).start()


def interrupted() -> int:
    """Ctrl-C or SIGTERM, wherever it came: one line, exit 130. A re-run plans again from live state."""
    import signal

    from rbacbridge import cleanup

    cleanup.stop()
    for signum in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the clean-up short
        signal.signal(signum, signal.SIG_IGN)
    if not _interrupt_said:
        _interrupt_said.append(True)
        _error_line(cleanup.interrupt_line())
    return EXIT_INTERRUPTED


def _error_line(text: str) -> None:
    from rbacbridge.errors import redact

    try:
        sys.stderr.write(f"error: {one_line(redact(str(text)), 293)}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _exit(code: int) -> None:
    import signal

    # The exit code is decided: a Ctrl-C (or SIGTERM) from now on must not replace it with a traceback or -2.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from rbacbridge import cleanup

    if code == EXIT_INTERRUPTED or cleanup.pending():
        # Pods this run created and has not deleted (a worker thread still waiting, a wait cut short) go now,
        # before os._exit below stops every thread.
        cleanup.undo_all()
        if code != EXIT_INTERRUPTED:
            cleanup.reset()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code == EXIT_INTERRUPTED:
        # Leave now: do not wait for worker threads (SSH commands) or run exit hooks that a
        # second Ctrl-C could interrupt with a traceback (or an exit status of -2).
        os._exit(code)
    sys.exit(code)


def _run(argv: list[str], debug: bool) -> int:
    from rbacbridge.cli.options import flush_said

    try:
        return _run_app(argv, debug)
    finally:
        flush_said(drop=True)  # a `config:` line never said (bad input) is not said after the error


def _run_app(argv: list[str], debug: bool) -> int:
    from rbacbridge.cli import completion
    from rbacbridge.cli.options import flush_said

    try:
        completion.enable()
        if completion.early(argv):  # `--show-completion [SHELL]`: an optional value click cannot parse
            return EXIT_OK
        code = app(args=argv, prog_name="rbacbridge", standalone_mode=False)
        flush_said()
        if code == EXIT_INTERRUPTED:
            return interrupted()  # typer turned Ctrl-C into a silent exit code 130
        return code if isinstance(code, int) else EXIT_OK
    except typer.Exit as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return interrupted()  # typer turns Ctrl-C into a silent Exit(130)
        flush_said()
        return exc.exit_code
    except RbacbridgeError as exc:
        if isinstance(exc, Interrupted):
            return interrupted()
        flush_said(drop=True)  # a failure before any output is its one line alone
        if debug:
            _trace()
        _error_line(str(exc))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001
        # typer ships its own copy of click's exception classes: recognise them by shape.
        if type(exc).__name__ == "Abort":
            return interrupted()  # Ctrl-C (or end of input) at a prompt
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.format_message())
            return EXIT_OK
        if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            _error_line(f"{exc.format_message()} (see `rbacbridge --help`)")
            return EXIT_USAGE if exc.exit_code == 2 else exc.exit_code
        if debug:
            _trace()
        _error_line(f"unexpected {type(exc).__name__}: {exc}" + ("" if debug else " (run with --debug for a trace)"))
        return EXIT_FAILED


def _trace() -> None:
    """--debug: the Python trace of the exception being handled, redacted like the error line."""
    import traceback

    from rbacbridge.errors import redact

    try:
        sys.stderr.write(redact(traceback.format_exc()))
    except (OSError, ValueError):
        pass
