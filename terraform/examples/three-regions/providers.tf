# One helm and one kubernetes provider per region, each pointed at that
# region's cluster. Terraform cannot for_each provider configurations (nor
# pass a different one to each instance of a for_each module), so every
# region has its own aliases here and its own module block in main.tf:
# adding a region means adding both (see ../../README.md).

provider "helm" {
  alias = "us_east"
  kubernetes = {
    config_path    = var.kubeconfig
    config_context = local.regions["us-east"].kube_context
  }
}

provider "kubernetes" {
  alias          = "us_east"
  config_path    = var.kubeconfig
  config_context = local.regions["us-east"].kube_context
}

provider "helm" {
  alias = "eu_west"
  kubernetes = {
    config_path    = var.kubeconfig
    config_context = local.regions["eu-west"].kube_context
  }
}

provider "kubernetes" {
  alias          = "eu_west"
  config_path    = var.kubeconfig
  config_context = local.regions["eu-west"].kube_context
}

provider "helm" {
  alias = "ap_south"
  kubernetes = {
    config_path    = var.kubeconfig
    config_context = local.regions["ap-south"].kube_context
  }
}

provider "kubernetes" {
  alias          = "ap_south"
  config_path    = var.kubeconfig
  config_context = local.regions["ap-south"].kube_context
}

# Route 53 is global: one provider serves every region's records.
provider "aws" {
  region = var.aws_region
}
