variable "domain" {
  description = "Base DNS name; its Route 53 hosted zone is route53_zone_id."
  type        = string
  default     = "example.com"
}

variable "route53_zone_id" {
  description = "The Route 53 hosted zone of domain."
  type        = string
}

variable "aws_region" {
  description = "Region of the AWS provider (Route 53 itself is global)."
  type        = string
  default     = "us-east-1"
}

variable "image" {
  description = "The Cascade image (deploy/Dockerfile)."
  type = object({
    repository  = string
    tag         = string
    pull_policy = optional(string, "IfNotPresent")
  })
}

variable "kubeconfig" {
  description = "The kubeconfig holding every region's context."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_contexts" {
  description = "The kubeconfig context of each region's cluster."
  type        = map(string)
  default = {
    us-east  = "cascade-us-east"
    eu-west  = "cascade-eu-west"
    ap-south = "cascade-ap-south"
  }

  validation {
    condition     = alltrue([for name in ["us-east", "eu-west", "ap-south"] : contains(keys(var.kube_contexts), name)])
    error_message = "kube_contexts needs a context for us-east, eu-west and ap-south."
  }
}

variable "control_plane_ingress_ip" {
  description = "The control plane's Ingress address in us-east, once known (null: api.<domain> is not created yet)."
  type        = string
  default     = null
}

variable "certs_dir" {
  description = "Directory of ca.pem and each node's <node id>.pem/.key (`cascade certs --out DIR --relay <region>-relay ... --edge <region>-edge-<i> ...`; main.tf lists the command), relative to where terraform runs."
  type        = string
  default     = "certs"
}

variable "cluster_secret" {
  description = "The cluster secret (16+ characters), the same in every region: `openssl rand -base64 32`."
  type        = string
  sensitive   = true
}

variable "database_url" {
  description = "postgres:// URL of the control plane's database (us-east)."
  type        = string
  sensitive   = true
}

variable "redis_url" {
  description = "redis:// or rediss:// URL of the control plane's Redis (us-east)."
  type        = string
  sensitive   = true
}
