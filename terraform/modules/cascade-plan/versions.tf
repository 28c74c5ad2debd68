# This module has no providers and no resources: it only computes the plan
# of a Cascade cluster (addresses, relay peers, Helm values, DNS records)
# from its inputs, so `terraform init`, `validate` and `test` need nothing
# from a registry.
terraform {
  # 1.9: variable validations may refer to other variables (default_region).
  required_version = ">= 1.9"
}
