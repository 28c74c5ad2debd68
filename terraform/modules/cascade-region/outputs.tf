output "region" {
  description = "The region this release serves."
  value       = local.region
}

output "namespace" {
  description = "The namespace of the release."
  value       = helm_release.cascade.namespace
}

output "release" {
  description = "The Helm release: name, chart version and status."
  value = {
    name    = helm_release.cascade.name
    version = helm_release.cascade.version
    status  = helm_release.cascade.status
  }
}

output "secret_names" {
  description = "The Secrets the release reads (created here when manage_secrets is true)."
  value = concat(
    [var.values.secrets.existingSecret, var.values.tls.existingSecret],
    local.control_plane ? [var.values.controlPlane.database.existingSecret, var.values.controlPlane.redis.existingSecret] : [],
  )
}

output "dns_names" {
  description = "The fully qualified names of the records created."
  value       = sort([for r in aws_route53_record.cascade : r.fqdn])
}
