terraform {
  required_version = ">= 1.9"

  required_providers {
    helm = {
      source = "hashicorp/helm"
      # 3.x: the provider blocks in providers.tf use its `kubernetes = {}`
      # attribute (2.x had a block).
      version = "~> 3.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.36, < 4.0"
    }
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }

  # Keep the state in a remote, encrypted backend with locking: it holds
  # the Kubernetes Secrets (cluster secret, relay keys, database URL) in
  # plain text. For example:
  # backend "s3" {
  #   bucket       = "my-terraform-state"
  #   key          = "cascade/terraform.tfstate"
  #   region       = "us-east-1"
  #   encrypt      = true
  #   use_lockfile = true
  # }
}
