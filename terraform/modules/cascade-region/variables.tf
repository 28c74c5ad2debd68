variable "values" {
  description = "The helm/cascade values of this region's release: one entry of cascade-plan's helm_values. The Secrets below are named after its existingSecret fields."
  type        = any

  validation {
    condition = (
      can(tostring(var.values.region)) &&
      can(tobool(var.values.controlPlane.enabled)) &&
      can(tostring(var.values.secrets.existingSecret)) &&
      can(tostring(var.values.tls.existingSecret)) &&
      can(tostring(var.values.controlPlane.database.existingSecret)) &&
      can(tostring(var.values.controlPlane.database.key)) &&
      can(tostring(var.values.controlPlane.redis.existingSecret)) &&
      can(tostring(var.values.controlPlane.redis.key))
    )
    error_message = "values must be one region of cascade-plan's helm_values (region, controlPlane.enabled and the existingSecret names are missing)."
  }
}

variable "release_name" {
  description = "The Helm release name; cascade-plan's DNS names assume it (its release_name output)."
  type        = string
  default     = "cascade"
}

variable "namespace" {
  description = "The Kubernetes namespace of the release and its Secrets."
  type        = string
  default     = "cascade"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.namespace)) && var.namespace != "default"
    error_message = "namespace must be a Kubernetes namespace name (a-z 0-9 -), and not \"default\": give Cascade its own."
  }
}

variable "create_namespace" {
  description = "Create the namespace (false: it exists already)."
  type        = bool
  default     = true
}

variable "chart_path" {
  description = "Path (or repository reference) of the helm/cascade chart. Null: the chart in this repository, ../../../helm/cascade from this module."
  type        = string
  default     = null
}

variable "chart_version" {
  description = "Chart version, when chart_path names a chart in a repository; null for a local chart."
  type        = string
  default     = null
}

variable "helm_timeout" {
  description = "Seconds helm waits for the release to become ready. An edge drains for up to drain_timeout_secs when a rollout replaces it, one pod at a time."
  type        = number
  default     = 900
}

variable "manage_secrets" {
  description = "Create the Secrets the values name. False: they are made some other way (an external secrets operator, kubectl) and the secret inputs below are ignored."
  type        = bool
  default     = true
}

variable "cluster_secret" {
  description = "The cluster secret ([control_plane.cluster] secret, 16+ characters): the control plane verifies node credentials with it and the nodes derive theirs. The same in every region."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.cluster_secret == null || try(length(var.cluster_secret) >= 16, false)
    error_message = "cluster_secret must be at least 16 characters."
  }
}

variable "relay_tls" {
  description = "The cluster CA and this region's link certificates by node id: ca (PEM) and nodes = { \"<region>-relay\" = { cert, key }, \"<region>-edge-<i>\" = { cert, key } ... } (cascade-plan's node_ids; `cascade certs --relay <region>-relay --edge <region>-edge-0 ...`). Each certificate names its node (URI SAN spiffe://cascade.internal/<role>/<node id>). Stored in the Secret tls.existingSecret as ca.pem, <node id>.pem, <node id>.key."
  type = object({
    ca = string
    nodes = map(object({
      cert = string
      key  = string
    }))
  })
  default   = null
  sensitive = true

  validation {
    condition = var.relay_tls == null || try(alltrue(concat(
      [strcontains(var.relay_tls.ca, "-----BEGIN CERTIFICATE-----")],
      [for id, n in var.relay_tls.nodes : strcontains(n.cert, "-----BEGIN CERTIFICATE-----") && strcontains(n.key, "PRIVATE KEY-----")],
      [for id, n in var.relay_tls.nodes : can(regex("^[A-Za-z0-9._-]{1,64}$", id))],
    )), false)
    error_message = "relay_tls must hold PEM: ca a certificate, and each node (by node id, 1-64 of A-Z a-z 0-9 . _ -) a cert and a private key."
  }
}

variable "database_url" {
  description = "postgres:// URL of the control plane's database. Needed only in the control-plane region."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.database_url == null || try(startswith(var.database_url, "postgres://") || startswith(var.database_url, "postgresql://"), false)
    error_message = "database_url must be a postgres:// (or postgresql://) URL."
  }
}

variable "redis_url" {
  description = "redis:// or rediss:// URL of the control plane's Redis. Needed only in the control-plane region."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.redis_url == null || try(startswith(var.redis_url, "redis://") || startswith(var.redis_url, "rediss://"), false)
    error_message = "redis_url must be a redis:// or rediss:// URL."
  }
}

variable "dns_zone_id" {
  description = "The Route 53 hosted zone (of the domain) the records go in. Needed when dns_records is not empty."
  type        = string
  default     = null
}

variable "dns_records" {
  description = "The records this region creates: cascade-plan's dns_records_by_region[region] ({name, type, value}, names fully qualified)."
  type = list(object({
    name  = string
    type  = string
    value = string
  }))
  default = []

  validation {
    condition     = alltrue([for r in var.dns_records : contains(["A", "AAAA", "CNAME"], r.type)])
    error_message = "dns_records types must be A, AAAA or CNAME."
  }

  validation {
    condition     = length(distinct([for r in var.dns_records : "${r.name} ${r.type}"])) == length(var.dns_records)
    error_message = "dns_records must not name the same record (name and type) twice."
  }
}

variable "dns_ttl" {
  description = "TTL of the records, seconds. Edge and relay addresses are static, but keep it short enough to move one."
  type        = number
  default     = 300
}
