# One region of a Cascade cluster: its Kubernetes secrets, its Helm release
# of helm/cascade, and its DNS records. The caller configures the providers
# (one helm and one kubernetes per region's cluster, one aws for Route 53)
# and passes them in: this module configures none.
terraform {
  # 1.9: cross-variable checks; 1.11 is what the offline check runs.
  required_version = ">= 1.9"

  required_providers {
    helm = {
      source = "hashicorp/helm"
      # 3.x: the provider's kubernetes settings are an attribute; this
      # module uses only helm_release arguments that 2.x and 3.x share.
      version = ">= 2.12, < 4.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.20, < 4.0"
    }
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}
