"""The worker instances: their ids (configured, else from the cluster's nodes), one describe call that
checks they exist, and what their metadata options mean for kube2iam (notes and warnings in the plan)."""

from __future__ import annotations

import re
from typing import Any

from rbacbridge.aws.client import AwsError, AwsGateway, _chunks, _pages
from rbacbridge.errors import UsageError


def instance_ids(ctx) -> list[str]:
    """Configured instance ids, else those of the cluster's nodes (spec.providerID)."""
    if ctx.config.instance_ids:
        return list(ctx.config.instance_ids)
    if "kube" not in ctx.parts:
        ctx.facts.setdefault("notes", []).append(
            "no --instance-id given and the kube part is not selected: the instance profile is not associated with any instance")
        return []

    def from_cluster() -> list[str]:
        from rbacbridge.kube import cluster_nodes

        nodes = cluster_nodes(ctx)
        without = [n.name for n in nodes if not n.instance_id]
        if without:
            ctx.facts.setdefault("notes", []).append(
                f"nodes without an AWS providerID, not associated: {', '.join(without)}")
        return sorted({n.instance_id for n in nodes if n.instance_id})

    return ctx.fact("instance_ids", from_cluster)


def _describe_instances(gw: AwsGateway, instance_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The given instances, one call (paginated); a missing instance is bad input."""
    if not instance_ids:
        return {}
    instances: dict[str, dict[str, Any]] = {}
    try:
        for chunk in _chunks(instance_ids, 1000):
            for page in _pages(gw, "ec2", "describe_instances", "NextToken", InstanceIds=chunk):
                for reservation in page["Reservations"]:
                    for instance in reservation["Instances"]:
                        instances[instance["InstanceId"]] = instance
    except AwsError as exc:
        if exc.code == "InvalidInstanceID.NotFound":
            raise UsageError(f"{exc} (region {gw.config.region})") from None
        if exc.code == "InvalidInstanceID.Malformed":
            raise UsageError(str(exc)) from None
        raise
    return instances


def metadata_finding(instance_id: str, options: dict[str, Any]) -> dict[str, Any]:
    """What an instance's MetadataOptions mean for pods (HttpTokens, HttpPutResponseHopLimit, HttpEndpoint).

    `pods_blocked_without_rule`: with IMDSv2 tokens required and a hop limit of 1, the token a pod asks
    for is dropped one hop (the pod's network namespace) short of it, and tokenless calls get 401: pods
    cannot reach the metadata service even if kube2iam's iptables rule is missing. kube2iam itself runs on
    the host network and is not affected."""
    tokens = options.get("HttpTokens") or "optional"
    hops = options.get("HttpPutResponseHopLimit")
    endpoint = options.get("HttpEndpoint") or "enabled"  # AWS's default; moto omits it after a modify
    blocked = False
    if endpoint == "disabled":
        meaning = ("the instance metadata service is disabled: kube2iam cannot get the node role's credentials, "
                   "so no pod gets a role (enable HttpEndpoint)")
        blocked = True
    elif tokens == "required" and hops == 1:
        meaning = ("IMDSv2 tokens required, hop limit 1: pods cannot reach the metadata service even without "
                   "kube2iam's iptables rule (good); kube2iam on the host network still can")
        blocked = True
    elif tokens == "required":
        meaning = (f"IMDSv2 tokens required but hop limit {hops}: a pod can fetch a token itself, so kube2iam's "
                   "iptables rule is the only barrier between pods and the node role (hop limit 1 adds a second)")
    else:
        meaning = ("IMDSv1 allowed (HttpTokens optional): a plain GET from any pod reaches the node role's credentials "
                   "wherever kube2iam's iptables rule is missing: the rule is the only barrier "
                   "(HttpTokens required with hop limit 1 adds a second)")
    return {"instance_id": instance_id, "http_tokens": tokens, "hop_limit": hops, "http_endpoint": endpoint,
            "pods_blocked_without_rule": blocked, "meaning": meaning}


def _image_without_imdsv2(image: str) -> bool:
    """Upstream kube2iam images before 0.13.0 have no IMDSv2 support (0.12.0 was never published)."""
    match = re.fullmatch(r"(?:docker\.io/)?jtblin/kube2iam:v?(\d+)\.(\d+)(?:\.\d+)?", image)
    return bool(match) and (int(match.group(1)), int(match.group(2))) < (0, 13)


def _note_metadata_options(ctx, instances: dict[str, dict[str, Any]]) -> None:
    findings = [metadata_finding(i, instances[i].get("MetadataOptions") or {}) for i in sorted(instances)]
    if not findings:
        return
    ctx.facts["metadata_options"] = findings
    notes = ctx.facts.setdefault("notes", [])
    for finding in findings:
        notes.append(f"instance {finding['instance_id']}: {finding['meaning']}")
    image = ctx.config.kube2iam_image
    requiring = [f["instance_id"] for f in findings if f["http_tokens"] == "required"]
    if requiring and _image_without_imdsv2(image):
        ctx.facts.setdefault("warnings", []).append(
            f"kube2iam image {image} has no IMDSv2 support: it crash-loops (401 getting the instance id) on "
            f"{', '.join(requiring)}, which require tokens; use jtblin/kube2iam:0.13.0 or later (kube2iam.image)")
