variable "regions" {
  description = <<-EOT
    Every region of the cluster, by name (1-32 of a-z 0-9 -, not starting or
    ending with '-': the name is also a DNS label).
      latitude, longitude  where clients are sent by distance (degrees)
      kube_context         the kubeconfig context of the region's cluster
      edge_count           edge replicas (1-100), one static public IP each
      public_ip_cidr       the static public IPs reserved for the region:
                           host 10 is the relay's, hosts 20.. the edges'
                           (so it needs at least 20 + edge_count addresses)
      control_plane        true in exactly one region: the global control
                           plane (API, WebSocket, web client) runs there
  EOT
  type = map(object({
    latitude       = number
    longitude      = number
    kube_context   = string
    edge_count     = number
    public_ip_cidr = string
    control_plane  = optional(bool, false)
  }))

  validation {
    condition     = alltrue([for name in keys(var.regions) : can(regex("^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$", name))])
    error_message = "Region names must be 1-32 of a-z 0-9 - and may not start or end with '-' (they are DNS labels and control-plane region names); bad: ${join(", ", [for name in keys(var.regions) : jsonencode(name) if !can(regex("^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$", name))])}."
  }

  validation {
    condition     = length([for name, r in var.regions : name if r.control_plane == true]) >= 1
    error_message = "No region has control_plane = true: exactly one region must run the control plane."
  }

  validation {
    condition     = length([for name, r in var.regions : name if r.control_plane == true]) <= 1
    error_message = "More than one region has control_plane = true (${join(", ", [for name, r in var.regions : name if r.control_plane == true])}): the control plane is global, exactly one region runs it."
  }

  validation {
    condition     = alltrue([for r in var.regions : r.edge_count >= 1 && r.edge_count <= 100 && floor(r.edge_count) == r.edge_count])
    error_message = "edge_count must be a whole number from 1 to 100; bad: ${join(", ", [for name, r in var.regions : "${name} = ${r.edge_count}" if !(r.edge_count >= 1 && r.edge_count <= 100 && floor(r.edge_count) == r.edge_count)])}."
  }

  validation {
    condition     = alltrue([for r in var.regions : can(cidrhost(r.public_ip_cidr, 0)) && strcontains(r.public_ip_cidr, "/")])
    error_message = "public_ip_cidr must be a CIDR block such as 203.0.113.0/24; bad: ${join(", ", [for name, r in var.regions : "${name} = ${jsonencode(r.public_ip_cidr)}" if !(can(cidrhost(r.public_ip_cidr, 0)) && strcontains(r.public_ip_cidr, "/"))])}."
  }

  validation {
    # The highest host used is 20 + edge_count - 1. A region whose CIDR or
    # edge_count is invalid is reported by the rules above, not here.
    condition = alltrue([for r in var.regions : (
      !can(cidrhost(r.public_ip_cidr, 0)) || !(r.edge_count >= 1 && r.edge_count <= 100 && floor(r.edge_count) == r.edge_count) ||
      can(cidrhost(r.public_ip_cidr, 19 + r.edge_count))
    )])
    error_message = "public_ip_cidr is too small: a region needs 20 + edge_count addresses (host 10 is the relay, hosts 20 to 19 + edge_count the edges); too small: ${join(", ", [for name, r in var.regions : "${name} (${r.public_ip_cidr} for ${r.edge_count} edges)" if can(cidrhost(r.public_ip_cidr, 0)) && !can(cidrhost(r.public_ip_cidr, 19 + r.edge_count))])}."
  }

  validation {
    # Two regions given the same (or overlapping) range would hand one
    # address to two LoadBalancer Services. Checked once every edge_count
    # is valid; an invalid CIDR or one too small is reported above.
    condition = !alltrue([for r in var.regions : r.edge_count >= 1 && r.edge_count <= 100 && floor(r.edge_count) == r.edge_count]) || try(
      length(distinct(flatten([for r in var.regions : concat([cidrhost(r.public_ip_cidr, 10)], [for i in range(r.edge_count) : cidrhost(r.public_ip_cidr, 20 + i)])])))
      == sum([for r in var.regions : 1 + r.edge_count]),
      true
    )
    error_message = "Two regions' public_ip_cidr ranges hand out the same address (the relay at host 10 and the edges at hosts 20..): give every region its own range."
  }

  validation {
    condition     = alltrue([for r in var.regions : r.latitude >= -90 && r.latitude <= 90 && r.longitude >= -180 && r.longitude <= 180])
    error_message = "latitude must be within -90..90 and longitude within -180..180 (degrees)."
  }

  validation {
    condition     = alltrue([for r in var.regions : trimspace(r.kube_context) != ""])
    error_message = "kube_context must name the kubeconfig context of the region's Kubernetes cluster."
  }
}

variable "domain" {
  description = "Base DNS name: the API is api.<domain>, the relay of a region relay.<region>.<domain>, its edges <release>-edge-<i>.<region>.<domain>."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$", var.domain)) && length(var.domain) <= 200
    error_message = "domain must be a lower-case DNS name such as example.com (no scheme, no trailing dot)."
  }
}

variable "image" {
  description = "The Cascade image (deploy/Dockerfile) every region runs."
  type = object({
    repository  = string
    tag         = string
    pull_policy = optional(string, "IfNotPresent")
  })

  validation {
    condition     = trimspace(var.image.repository) != "" && trimspace(var.image.tag) != ""
    error_message = "image.repository and image.tag must both be set."
  }

  validation {
    condition     = contains(["Always", "IfNotPresent", "Never"], var.image.pull_policy)
    error_message = "image.pull_policy must be Always, IfNotPresent or Never."
  }
}

variable "control_plane_ingress_ip" {
  description = <<-EOT
    The public IPv4 address of the control-plane region's Ingress (the load
    balancer in front of the API). This module cannot know it: it belongs to
    the region's ingress controller. Null: the api.<domain> record is left
    out of dns_records and listed in missing_dns_records; set it and apply
    again once the address is known.
  EOT
  type        = string
  default     = null

  validation {
    condition     = var.control_plane_ingress_ip == null || can(regex("^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$", var.control_plane_ingress_ip))
    error_message = "control_plane_ingress_ip must be an IPv4 address such as 203.0.113.5 (or null while it is not known)."
  }
}

variable "default_region" {
  description = "Where clients go when nothing else says (control_plane.calls.default_region). Null: the control-plane region."
  type        = string
  default     = null

  validation {
    condition     = var.default_region == null || contains(keys(var.regions), coalesce(var.default_region, "-"))
    error_message = "default_region must be one of the regions (or null for the control-plane region)."
  }
}

variable "release_name" {
  description = "The Helm release name used in every region: edge pods are <release>-edge-<i>, which their DNS names follow."
  type        = string
  default     = "cascade"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$", var.release_name))
    error_message = "release_name must be 1-42 of a-z 0-9 - (a Kubernetes name that leaves room for -edge-<i>), not starting or ending with '-'."
  }
}

variable "control_plane_replicas" {
  description = "Control-plane replicas (2+ behind the Ingress; one needs no Redis, but the chart always wires it)."
  type        = number
  default     = 2

  validation {
    condition     = var.control_plane_replicas >= 1 && floor(var.control_plane_replicas) == var.control_plane_replicas
    error_message = "control_plane_replicas must be a whole number of at least 1."
  }
}

variable "media_port" {
  description = "The edges' UDP media port (ICE-lite, DTLS-SRTP), the same in every region."
  type        = number
  default     = 50000

  validation {
    condition     = var.media_port >= 1024 && var.media_port <= 65535 && floor(var.media_port) == var.media_port
    error_message = "media_port must be a port number from 1024 to 65535."
  }
}

variable "relay_port" {
  description = "The relays' QUIC port (UDP), used in the peers' addresses."
  type        = number
  default     = 4470

  validation {
    condition     = var.relay_port >= 1 && var.relay_port <= 65535 && floor(var.relay_port) == var.relay_port
    error_message = "relay_port must be a port number from 1 to 65535."
  }
}

variable "secret_names" {
  description = "Names of the Kubernetes Secrets the chart reads (existingSecret in its values); cascade-region creates them."
  type = object({
    cluster   = optional(string, "cascade-cluster")
    relay_tls = optional(string, "cascade-relay-tls")
    database  = optional(string, "cascade-db")
    redis     = optional(string, "cascade-redis")
  })
  default = {}

  validation {
    condition     = alltrue([for name in values(var.secret_names) : can(regex("^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$", name))])
    error_message = "Secret names must be Kubernetes names (a-z 0-9 - ., starting and ending with a letter or digit)."
  }
}
