"""verify: the S3 access matrix, expected (from the configuration) vs observed (from real calls).

Work only; rendering lives in `rbacbridge.report`. The package, in reading order:

  model      checks, error categories, blame layers; the dataclasses of a run (no work)
  expected   principals and the expected matrix: configuration + policy evaluation only
  probes     runners (local, SSH, Kubernetes exec), backends (AWS CLI), the probes, run concurrently
  inprocess  --probe-from rbacbridge: one exec per pod reads identity + credentials; rbacbridge makes the
             bucket and chain calls with them once per role (boto3), spot-checked in the pods
  blame      expected vs observed, cell by cell; each mismatch blamed on a layer; run_matrix
  explain    a blamed cell's policy decision from iam:SimulatePrincipalPolicy (else the evaluator explains)
  settle     the settle window right after setup: disagreeing cells observed again with backoff
  diagnose   live facts that sharpen the blame or fail verify on their own (drift, hostNetwork pods)
  ephemeral  --probe ephemeral: an AWS CLI container added to a pod
  annotation_probe  annotation cells, live: a probe pod per tenant namespace annotated with another tenant's role
  tenant_probe  a tenant (or the default role) with no running pod on a node: a probe pod there with its role
  live       the live run: principals found in the cluster, probed where they run
  credential_source  which path served an identity (kube2iam, web identity, Pod Identity, node role, none)
  migration  --baseline FILE: every cell compared with an earlier report (layer migration)

Principals come from the configuration's tenants: the host node, the default-role pod (nginx-vanilla)
and every tenant's workloads; a tenant (or the default role) with no running, ready pod on a node verify
covers is checked from a probe pod there, or reported "not verified" with the reason. Checks per principal: its identity (`sts get-caller-identity`: which role
it really got), per location (buckets.shared and every tenant's grants) read (`s3:ListBucket` on the
bucket) and write (`s3:PutObject` + `s3:DeleteObject` on a probe object under the grant), and after
kube2iam one chain cell per role (can the pod obtain it by calling `sts:AssumeRole` itself?) and, for a
tenant's pod, annotation cells (would a pod of this tenant annotated with another tenant's role get
credentials? live: one probe pod per tenant namespace, roles rotated).
A pod must only ever get its own tenant's role, so both answers must be no. Each mismatch is blamed on a
layer (see LAYERS).

Besides the cells, verify reports findings that fail the run even when every cell matches: drift
(live IAM / Kubernetes state differs from what setup wants, found by the one planner) and hostNetwork
pods in namespaces that restrict roles (kube2iam never sees them).
"""

from rbacbridge.verify.model import *  # noqa: F401,F403
from rbacbridge.verify.model import Documents  # noqa: F401
from rbacbridge.verify.expected import (annotation_targets, buckets_of, chain_path, chain_prediction,  # noqa: F401
                                        chain_targets, configured_principals, default_principals, expected_matrix,
                                        expected_role, has_chain_cells, intended_allowed_roles, kube2iam_hands,
                                        location_owners, managed_documents, probe_key, probe_principal,
                                        role_allowed_in_namespace, role_arns, role_owners, with_probe_pods)
from rbacbridge.verify.probes import (CLI_CHECK, INSTALL_CLI_SCRIPT, AwsCliBackend, CommandRunner,  # noqa: F401
                                      KubeExecRunner, LocalRunner, ProbeBackend, SshRunner, UnavailableBackend, classify,
                                      ensure_cli, ensure_cli_all, observe, probe_annotation, probe_chain,
                                      probe_read, probe_write, can_request_roles)
from rbacbridge.verify.blame import annotation_drift, compare, run_matrix  # noqa: F401
from rbacbridge.verify.diagnose import (DRIFT_LAYERS, drift_findings, host_network_findings,  # noqa: F401
                                        interception_problems, kube2iam_missing, live_diagnostics)
from rbacbridge.verify.ephemeral import EPHEMERAL_LIFETIME, EPHEMERAL_PREFIX, ensure_ephemeral_probe  # noqa: F401
from rbacbridge.verify.annotation_probe import AnnotationAsk, clean_leftovers, rotation, run_asks  # noqa: F401
from rbacbridge.verify.live import (LiveOptions, configured_annotation, live_targets, pick_pod,  # noqa: F401
                                    pods_per_node, run_live)
from rbacbridge.verify.tenant_probe import TENANT_PROBE_PREFIX, ProbeNeed, ProbePodRunner, start_probe_pods  # noqa: F401
