locals {
  # A variable's default cannot use path.module, so the repository's chart
  # is the fallback here.
  chart_path = coalesce(var.chart_path, "${path.module}/../../../helm/cascade")

  region        = var.values.region
  control_plane = var.values.controlPlane.enabled

  labels = {
    "app.kubernetes.io/part-of"    = "cascade"
    "app.kubernetes.io/instance"   = var.release_name
    "app.kubernetes.io/managed-by" = "terraform"
    "cascade-region"               = local.region
  }

  # The database and Redis Secrets exist only where the control plane runs.
  control_plane_secrets = var.manage_secrets && local.control_plane ? {
    database = { name = var.values.controlPlane.database.existingSecret, key = var.values.controlPlane.database.key }
    redis    = { name = var.values.controlPlane.redis.existingSecret, key = var.values.controlPlane.redis.key }
  } : {}

  dns_records = { for r in var.dns_records : "${r.name} ${r.type}" => r }
}

resource "kubernetes_namespace_v1" "cascade" {
  count = var.create_namespace ? 1 : 0

  metadata {
    name   = var.namespace
    labels = local.labels
  }
}

locals {
  # Every node the release runs needs a link certificate of its own (the
  # chart's node ids; its defaults where the values leave them out).
  needed_node_certs = concat(
    try(var.values.relay.enabled, true) ? ["${local.region}-relay"] : [],
    try(var.values.edge.enabled, true) ? [for i in range(try(var.values.edge.replicas, 2)) : "${local.region}-edge-${i}"] : [],
  )
  # Node ids are not secret; the certificates and keys stay sensitive.
  # (A null relay_tls counts as complete: its own precondition reports it.)
  missing_node_certs = sort(tolist(setsubtract(local.needed_node_certs, try(nonsensitive(keys(var.relay_tls.nodes)), local.needed_node_certs))))
}

locals {
  # The namespace the Secrets and the release go in, after it exists.
  namespace = var.create_namespace ? kubernetes_namespace_v1.cascade[0].metadata[0].name : var.namespace
}

resource "kubernetes_secret_v1" "cluster" {
  count = var.manage_secrets ? 1 : 0

  metadata {
    name      = var.values.secrets.existingSecret
    namespace = local.namespace
    labels    = local.labels
  }
  type = "Opaque"
  data = {
    "cluster-secret" = var.cluster_secret
  }

  lifecycle {
    precondition {
      condition     = var.cluster_secret != null
      error_message = "cluster_secret is required when manage_secrets is true."
    }
  }
}

resource "kubernetes_secret_v1" "relay_tls" {
  count = var.manage_secrets ? 1 : 0

  metadata {
    name      = var.values.tls.existingSecret
    namespace = local.namespace
    labels    = local.labels
  }
  type = "Opaque"
  data = var.relay_tls == null ? {} : merge(
    { "ca.pem" = var.relay_tls.ca },
    { for id, n in var.relay_tls.nodes : "${id}.pem" => n.cert },
    { for id, n in var.relay_tls.nodes : "${id}.key" => n.key },
  )

  lifecycle {
    precondition {
      condition     = var.relay_tls != null
      error_message = "relay_tls is required when manage_secrets is true."
    }
    precondition {
      condition     = length(local.missing_node_certs) == 0
      error_message = "relay_tls.nodes lacks the certificates of ${join(", ", local.missing_node_certs)} (each node of the region needs its own)."
    }
  }
}

resource "kubernetes_secret_v1" "control_plane" {
  for_each = local.control_plane_secrets

  metadata {
    name      = each.value.name
    namespace = local.namespace
    labels    = local.labels
  }
  type = "Opaque"
  data = {
    (each.value.key) = each.key == "database" ? var.database_url : var.redis_url
  }

  lifecycle {
    precondition {
      condition     = (each.key == "database" ? var.database_url : var.redis_url) != null
      error_message = "The control plane runs in this region: database_url and redis_url are required (or set manage_secrets = false)."
    }
  }
}

resource "helm_release" "cascade" {
  name      = var.release_name
  chart     = local.chart_path
  version   = var.chart_version
  namespace = local.namespace

  values = [yamlencode(var.values)]

  # Wait for the pods to be ready, and roll a failed upgrade back.
  wait            = true
  atomic          = true
  cleanup_on_fail = true
  timeout         = var.helm_timeout
  max_history     = 10

  # The pods read these Secrets at start-up.
  depends_on = [
    kubernetes_secret_v1.cluster,
    kubernetes_secret_v1.relay_tls,
    kubernetes_secret_v1.control_plane,
  ]
}

resource "aws_route53_record" "cascade" {
  for_each = local.dns_records
  #checkov:skip=CKV2_AWS_23:The A records point at static public IPs of Kubernetes LoadBalancer Services (edges, relay, the Ingress), not at AWS resources Terraform could attach.

  zone_id = var.dns_zone_id
  name    = each.value.name
  type    = each.value.type
  ttl     = var.dns_ttl
  records = [each.value.value]

  lifecycle {
    precondition {
      condition     = var.dns_zone_id != null
      error_message = "dns_zone_id is required when dns_records is not empty."
    }
  }
}
