"""The pods transport (`--via kubernetes`): the same node scripts, reached by pod exec, not SSH.

rbacbridge.nodes builds every script (look, guarded changes) and classifies what comes back; this
package only carries a script to a node and its output back, as rbacbridge.nodes.ssh does: a
`PodSession` is a rbacbridge.nodes.session.Session (`name`, `user`, `run(argv, sudo)`, `peer_address()`,
`close()`). It imports that interface and rbacbridge.kube, never the ssh transport or the planning.

    session      PodSession, deleting created pods at close and at exit
    lifecycle    the short-lived pod: name, body, start, wait; leftovers and PodSecurity, once per run
    choose       per node: rbacbridge's own kube2iam pod there, else a short-lived one (open_session)
    host_probes  verify's AWS CLI pods on the host nodes

Where the script runs, per node:

- in rbacbridge's own kube2iam pod on that node: a running hostNetwork pod (its network namespace is
  the node's) whose controller is rbacbridge's DaemonSet `kube2iam` in kube2iam.namespace, by the
  DaemonSet's UID — never a pod found by image or args (`kube2iam_pods`). Upstream's image is alpine + the
  `iptables` package, entrypoint kube2iam (jtblin/kube2iam Dockerfile: `FROM alpine:3.x`,
  `RUN apk --no-cache add ca-certificates iptables`), so `sh` and `iptables` are there, and its
  iptables is the very one kube2iam writes its rule with. Not used when this run changes kube2iam
  itself (setup/teardown with the kube part: its pods are replaced or deleted under the run);
- else in a short-lived pod rbacbridge creates on that node (templates/k8s/node-exec-pod.yaml.j2):
  hostNetwork, capabilities drop ALL + add NET_ADMIN (not privileged), `nodeName` pinned, every
  taint tolerated, image `nodes.pod_image` (default kube2iam.image), labelled
  app.kubernetes.io/managed-by=rbacbridge + app.kubernetes.io/component=node-exec, in
  `nodes.pod_namespace` (default kube2iam.namespace). It is deleted when the run closes its
  sessions; pods with both labels that a killed run left are deleted by the next run before it
  creates any (only pods with both labels: ours). `audit` never creates one (it only reads).

Neither image ships `ss` (iproute2): a script that runs `sh -c` gets an `ss` shell function when the
command is missing, which reads /proc/net/tcp{,6} (the node's, with host networking) and prints the
listening sockets in `ss -Htln`'s shape, so the listener checks (dead-port guard, conflicts) work the
same as over SSH (process names are not visible from a pod: "a process listening on ...").

Before the first short-lived pod, the namespace's PodSecurity label is read: `baseline` and
`restricted` refuse hostNetwork and NET_ADMIN, so that is bad input (exit 2, one line, nothing
created), not a pod that never starts.
"""

from rbacbridge.nodes.pods.choose import kube2iam_pods, open_session, prepare
from rbacbridge.nodes.pods.host_probes import HostProbeRunner, start_host_probes
from rbacbridge.nodes.pods.lifecycle import (COMPONENT_LABEL, HOST_PROBE, NODE_EXEC, check_pod_security, pod_image,
                                             pod_name, pod_namespace, remove_leftovers, render_pod, selector, start_pod)
from rbacbridge.nodes.pods.session import SS_FALLBACK, PodSession, close_all, delete_pod

__all__ = ["COMPONENT_LABEL", "HOST_PROBE", "NODE_EXEC", "SS_FALLBACK", "HostProbeRunner", "PodSession", "check_pod_security",
           "close_all", "delete_pod", "kube2iam_pods", "open_session", "pod_image", "pod_name", "pod_namespace", "prepare",
           "remove_leftovers", "render_pod", "selector", "start_host_probes", "start_pod"]
