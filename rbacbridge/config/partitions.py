"""AWS partitions from botocore's own data (botocore/data/partitions.json): which partition a region is in,
the ARNs and service principals that follow, and the region check.

A region listed there is known. A region that matches a partition's `regionRegex` (or the generic shape of a
region name) but is not listed is accepted with one warning on stderr: AWS opens regions faster than an
installed botocore learns of them. Anything else is not a region name (exit 2). botocore is imported on the
first call, never at import time (`rbacbridge --help` stays instant).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import lru_cache

# The shape every AWS region name has had (us-east-1, cn-north-1, us-gov-west-1, eusc-de-east-1, us-isob-east-1):
# lower-case words joined by hyphens, ending in a number. Anything else is refused before botocore is asked.
REGION_SHAPE = re.compile(r"[a-z]{2,4}(-[a-z]{1,12}){1,3}-[0-9]{1,2}")
DEFAULT_PARTITION = "aws"
_warned: set[str] = set()


@dataclass(frozen=True)
class Partition:
    name: str  # aws, aws-cn, aws-us-gov, ...
    dns_suffix: str  # amazonaws.com, amazonaws.com.cn, ...
    known_region: bool  # the region is listed in botocore's data (else matched by pattern)

    def arn(self, service: str, region: str, account: str, resource: str) -> str:
        return f"arn:{self.name}:{service}:{region}:{account}:{resource}"

    def iam_arn(self, account: str, resource: str) -> str:
        return self.arn("iam", "", account, resource)

    def s3_arn(self, resource: str) -> str:
        return self.arn("s3", "", "", resource)

    @property
    def ec2_principal(self) -> str:
        """The service principal EC2 instances assume a role as. AWS documents ec2.amazonaws.com.cn for the
        China regions; every other partition (GovCloud included) uses ec2.amazonaws.com."""
        return "ec2.amazonaws.com.cn" if self.name == "aws-cn" else "ec2.amazonaws.com"

    @property
    def passed_to_ec2(self) -> list[str]:
        """Values of iam:PassedToService when a role is passed to EC2 (both spellings in China, as AWS accepts both)."""
        return ["ec2.amazonaws.com", "ec2.amazonaws.com.cn"] if self.name == "aws-cn" else ["ec2.amazonaws.com"]


@lru_cache(maxsize=1)
def _partition_data() -> list[dict]:
    import botocore.loaders

    return botocore.loaders.create_loader().load_data("partitions")["partitions"]


@lru_cache(maxsize=64)
def partition_for(region: str) -> Partition:
    """The partition of a region as botocore resolves it: listed regions first, then each partition's
    regionRegex; a well-formed region no partition claims falls to `aws` (what botocore's endpoint rules do)."""
    data = _partition_data()
    for entry in data:
        if region in entry.get("regions", {}):
            return Partition(entry["id"], entry["outputs"]["dnsSuffix"], True)
    for entry in data:
        if entry.get("regionRegex") and re.match(entry["regionRegex"], region):
            return Partition(entry["id"], entry["outputs"]["dnsSuffix"], False)
    default = next((e for e in data if e["id"] == DEFAULT_PARTITION), None)
    return Partition(DEFAULT_PARTITION, default["outputs"]["dnsSuffix"] if default else "amazonaws.com", False)


def well_formed(region: str) -> bool:
    return bool(REGION_SHAPE.fullmatch(region))


def warn_if_unknown(key: str, region: str) -> None:
    """One line on stderr (once per region) for a well-formed region botocore's data does not list."""
    if region in _warned:
        return
    found = partition_for(region)
    if found.known_region:
        return
    _warned.add(region)
    import botocore

    sys.stderr.write(f"warning: {key} {region!r} is not a region botocore {botocore.__version__} knows: assuming partition "
                     f"{found.name} (ARNs arn:{found.name}:…); check the spelling, or upgrade botocore\n")
