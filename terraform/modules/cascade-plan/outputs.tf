output "region_names" {
  description = "The regions, sorted."
  value       = local.region_names
}

output "control_plane_region" {
  description = "The one region that runs the control plane."
  value       = local.control_plane_region
}

output "control_plane_url" {
  description = "How nodes and clients reach the control plane (https://api.<domain>)."
  value       = local.control_plane_url
}

output "api_host" {
  description = "The control plane's Ingress host."
  value       = local.api_host
}

output "release_name" {
  description = "The Helm release name the DNS names assume; pass it to cascade-region."
  value       = var.release_name
}

output "relay_ips" {
  description = "Each region's relay address (host 10 of its range)."
  value       = local.relay_ips
}

output "edge_ips" {
  description = "Each region's edge addresses, edge i at host 20 + i of its range."
  value       = local.edge_ips
}

output "edge_hosts" {
  description = "Each region's edge signaling hosts, edge i first."
  value       = local.edge_hosts
}

output "node_ids" {
  description = "Each region's node ids ({relay, edges}): the chart names its relay <region>-relay and edge i <region>-edge-<i>, and each needs a link certificate of that name (`cascade certs --relay ... --edge ...`)."
  value = {
    for name, r in var.regions : name => {
      relay = "${name}-relay"
      edges = [for i in range(r.edge_count) : "${name}-edge-${i}"]
    }
  }
}

output "relay_peers" {
  description = "The relays each region's relay dials ({addr = \"ip:port\"}); every pair of regions appears once, dialed by the name that sorts first."
  value       = local.relay_peers
}

output "relay_peer_regions" {
  description = "relay_peers by region name instead of address."
  value       = local.relay_peer_regions
}

output "kube_contexts" {
  description = "Each region's kubeconfig context (for the caller's provider blocks)."
  value       = { for name, r in var.regions : name => r.kube_context }
}

output "helm_values" {
  description = "The helm/cascade values of each region's release (pass yamlencode of one to helm_release)."
  value       = local.helm_values
}

output "helm_values_yaml" {
  description = "helm_values as YAML, for `helm template -f` or a review."
  value       = { for name, v in local.helm_values : name => yamlencode(v) }
}

output "dns_records" {
  description = "Every DNS record the cluster needs: {name, type, value}, names fully qualified."
  value       = local.dns_records
}

output "dns_records_by_region" {
  description = "dns_records split by the region whose cascade-region creates them (api.<domain> goes with the control-plane region)."
  value       = local.dns_records_by_region
}

output "missing_dns_records" {
  description = "Records not in dns_records because an input is missing: api.<domain> until control_plane_ingress_ip is set."
  value       = var.control_plane_ingress_ip == null ? [{ name = local.api_host, type = "A", needs = "control_plane_ingress_ip" }] : []
}
