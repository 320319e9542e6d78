"""rbacbridge.nodes.ssh's offline checks: the ssh config is read like OpenSSH, every key or file problem is
a UsageError before anything is contacted (no network here: the hosts are TEST-NET addresses and
nothing connects). The real connections are in tests/test_ssh_netns.py."""

from __future__ import annotations

import re
import subprocess

import pytest

from rbacbridge.errors import UsageError
from rbacbridge.nodes.ssh import ACCEPT_NEW, STRICT, SshTarget, preflight, resolve


@pytest.fixture
def keys(tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "good")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw", "-f", str(tmp_path / "locked")], check=True)
    (tmp_path / "known_hosts").write_text("")
    return tmp_path


def target(tmp_path, config: str | None = None, **kw) -> SshTarget:
    path = tmp_path / "ssh_config"
    if config is not None:
        path.write_text(config)
    values = dict(host="n1", ssh_config=str(path) if config is not None else "none")
    values.update(kw)
    return SshTarget(**values)


def test_host_settings_come_from_the_config_and_flags_win(keys):
    config = (f"Host n1\n  HostName 192.0.2.10\n  Port 2200\n  User admin\n  IdentityFile {keys / 'good'}\n"
              f"  UserKnownHostsFile {keys / 'known_hosts'} ~/other\n  StrictHostKeyChecking accept-new\n"
              "  ProxyCommand ssh -W %h:%p -l %r bastion # %n %%\n")
    resolved = resolve(target(keys, config))
    assert (resolved.hostname, resolved.port, resolved.user) == ("192.0.2.10", 2200, "admin")
    assert resolved.proxy_command == "ssh -W 192.0.2.10:2200 -l admin bastion # n1 %"
    assert resolved.known_hosts[0] == str(keys / "known_hosts") and resolved.known_hosts[1].endswith("/other")
    assert resolved.host_keys == ACCEPT_NEW

    flags = resolve(target(keys, config, port=22, user="root", known_hosts=str(keys / "known_hosts")))
    assert flags.proxy_command == "ssh -W 192.0.2.10:22 -l root bastion # n1 %"
    assert flags.known_hosts == (str(keys / "known_hosts"),)


@pytest.mark.parametrize("value,mode,noted", [("yes", STRICT, False), ("ask", STRICT, False), ("accept-new", ACCEPT_NEW, False),
                                              ("no", ACCEPT_NEW, True), ("off", ACCEPT_NEW, True)])
def test_strict_host_key_checking_no_is_never_off(keys, value, mode, noted):
    config = f"Host n1\n  HostName 192.0.2.10\n  UserKnownHostsFile {keys / 'known_hosts'}\n  StrictHostKeyChecking {value}\n"
    resolved = resolve(target(keys, config))
    assert resolved.host_keys == mode
    assert bool(resolved.notes) == noted and all("accept-new" in n for n in resolved.notes)


@pytest.mark.parametrize("config,needle", [
    ("Host n1\n  HostName 192.0.2.10;reboot\n", "invalid host name"),
    ("Host n1\n  HostName -oProxyCommand=x\n", "invalid host name"),
    ("Host n1\n  User 'root;x'\n", "invalid SSH user"),
    ("Host n1\n  HostName 192.0.2.10\n  ProxyCommand nc %h %p %C\n", "unsupported token"),
    ("Host n1\n  HostName 192.0.2.10\n  ProxyJump b\n  ProxyCommand nc %h %p\n", "both ProxyJump and ProxyCommand"),
    ("Host n1\n  HostName 192.0.2.10\n  StrictHostKeyChecking maybe\n", "invalid StrictHostKeyChecking"),
    ("Host n1\n  HostName 192.0.2.10\n  ProxyJump bad;host\n", "invalid host name"),
    ("Host n1\n  HostName 192.0.2.10\n  UserKnownHostsFile /nonexistent/kh\n  GlobalKnownHostsFile none\n", "no known_hosts file"),
])
def test_bad_ssh_config_values_are_usage_errors(keys, config, needle):
    with pytest.raises(UsageError, match=needle):
        preflight(target(keys, config, known_hosts=None, accept_new=False) if "UserKnownHostsFile" in config
                  else target(keys, config, known_hosts=str(keys / "known_hosts")))


@pytest.mark.parametrize("key,needle", [("good.pub", "is a public key; give the private key (the private key is usually"),
                                        ("locked", "encrypted"), ("missing", "does not exist"), (".", "cannot read SSH key"),
                                        ("garbage", "not a private key")])
def test_key_problems_are_usage_errors(keys, key, needle):
    (keys / "garbage").write_bytes(b"\x00\x01 not a key")
    with pytest.raises(UsageError, match=re.escape(needle)):
        preflight(target(keys, key_file=str(keys / key), known_hosts=str(keys / "known_hosts")))


def test_a_good_key_and_known_hosts_pass_and_a_bad_jump_host_key_is_found_too(keys):
    assert preflight(target(keys, key_file=str(keys / "good"), known_hosts=str(keys / "known_hosts"))) == []
    config = f"Host n1\n  HostName 192.0.2.10\n  ProxyJump jump\nHost jump\n  HostName 192.0.2.11\n  IdentityFile {keys / 'good.pub'}\n"
    with pytest.raises(UsageError, match="public key"):
        preflight(target(keys, config, known_hosts=str(keys / "known_hosts")))
