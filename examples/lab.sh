#!/usr/bin/env bash
# Start the rbacbridge lab by hand: the article's cluster in network namespaces on this machine
# (moto as AWS, two nodes with sshd + iptables + pods, metadata and kube2iam stand-ins, a test
# Kubernetes API server). Needs root and Linux (ip netns, sshd, iptables) and the AWS CLI (pip install awscli).
# It prints the commands to run against it; Enter places the pods and starts kube2iam; Ctrl-C tears it down.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "error: the lab needs root (network namespaces, sshd, iptables)" >&2
  exit 2
fi
exec env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 -m tests.lab "$@"
