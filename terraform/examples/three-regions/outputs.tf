output "control_plane_url" {
  description = "Where clients and nodes reach the control plane."
  value       = module.plan.control_plane_url
}

output "relay_ips" {
  description = "Each region's relay address."
  value       = module.plan.relay_ips
}

output "edge_hosts" {
  description = "Each region's edge signaling hosts."
  value       = module.plan.edge_hosts
}

output "missing_dns_records" {
  description = "Records still to create: api.<domain> until control_plane_ingress_ip is set."
  value       = module.plan.missing_dns_records
}

output "releases" {
  description = "The Helm release of each region."
  value = {
    us-east  = module.us_east.release
    eu-west  = module.eu_west.release
    ap-south = module.ap_south.release
  }
}

output "dns_names" {
  description = "The DNS records created, by region."
  value = {
    us-east  = module.us_east.dns_names
    eu-west  = module.eu_west.dns_names
    ap-south = module.ap_south.dns_names
  }
}
