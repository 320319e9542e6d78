"""Configuration: the article's values as defaults, `rbacbridge.yaml` over them, flags over that.

Everything is validated here, before any outside system is called. The modules, each importing only
the ones above it:

- `values`      how a scalar of the file or a flag is read (`Text`, refusals of YAML 1.1 surprises, error lines)
- `validators`  one validator per kind of setting (IAM names, regions, buckets, ports, tolerations, ...)
- `schema`      the option table `SCHEMA`: YAML path, Config field, default, validator, help
- `tenancy`     `Tenant`, bucket grants and the `tenants:` list, one entry at a time
- `checks`      the settings together: names that collide (`check_config`, `check_tenants`)
- `model`       `Config`: the values and what follows from them; `with_overrides` puts flags over it
- `loading`     `load` / `load_text`: rbacbridge.yaml, strictly, over the defaults
- `tenant_edits` `rbacbridge tenant add/remove/list`: edits of the file's `tenants:` (imported on use)

This module re-exports the names other parts use, so `from rbacbridge.config import Config, load` works.
"""

from rbacbridge.config.checks import check_config, check_tenants
from rbacbridge.config.loading import load, load_text
from rbacbridge.config.model import Config
from rbacbridge.config.schema import SCHEMA, Option
from rbacbridge.config.tenancy import (LEGACY_KEYS, LEGACY_TENANT, TENANT_KEYS, TENANT_REFERENCE, Tenant, bucket_grant,
                                       grant_bucket, grant_objects_arn, legacy_tenant, tenant, tenants)
from rbacbridge.config.validators import (AUTO, DEDICATED, DEFAULT_ROLE_MODES, NODE, NODE_VIA, account_id, boolean,
                                          bucket_name, default_role, derived_install_id, endpoint_url, iam_key, image,
                                          install_id, instance_ids, interface, ipv4, k8s_name, kms_key, label_selector,
                                          node_addresses, node_via, optional_image, optional_k8s_name, optional_text,
                                          parallelism, policy_arns, policy_name, port, ports, profile_name, region,
                                          role_name, seconds, ssh_user, tolerations)
from rbacbridge.config.values import Text

__all__ = [
    "AUTO", "DEDICATED", "DEFAULT_ROLE_MODES", "LEGACY_KEYS", "LEGACY_TENANT", "NODE", "NODE_VIA", "SCHEMA", "TENANT_KEYS",
    "TENANT_REFERENCE", "Config", "Option", "Tenant", "Text", "account_id", "boolean", "bucket_grant", "bucket_name",
    "check_config", "check_tenants", "default_role", "derived_install_id", "endpoint_url", "grant_bucket",
    "grant_objects_arn", "iam_key", "image", "install_id", "instance_ids", "interface", "ipv4", "k8s_name", "kms_key",
    "label_selector", "legacy_tenant", "load", "load_text", "node_addresses", "node_via", "optional_image",
    "optional_k8s_name", "optional_text", "parallelism", "policy_arns", "policy_name", "port", "ports", "profile_name",
    "region", "role_name", "seconds", "ssh_user", "tenant", "tenants", "tolerations",
]
