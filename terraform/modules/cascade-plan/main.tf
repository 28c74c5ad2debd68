locals {
  # keys() sorts: the order in which relays dial each other (below) and in
  # which regions are listed everywhere.
  region_names = keys(var.regions)

  control_plane_region = one([for name, r in var.regions : name if r.control_plane])
  default_region       = coalesce(var.default_region, local.control_plane_region)

  api_host          = "api.${var.domain}"
  control_plane_url = "https://${local.api_host}"

  # Static addresses: host 10 of a region's range is its relay, hosts 20..
  # its edges (edge i: host 20 + i).
  relay_ips = { for name, r in var.regions : name => cidrhost(r.public_ip_cidr, 10) }
  edge_ips = {
    for name, r in var.regions : name => [for i in range(r.edge_count) : cidrhost(r.public_ip_cidr, 20 + i)]
  }

  # Edge pods are <release>-edge-<i> (a StatefulSet); each one's signaling
  # host is "{pod}.{region}.{domain}" (the chart's edge.hostTemplate).
  edge_host_template = "{pod}.{region}.{domain}"
  edge_hosts = {
    for name, r in var.regions : name => [for i in range(r.edge_count) : "${var.release_name}-edge-${i}.${name}.${var.domain}"]
  }
  relay_hosts = { for name in local.region_names : name => "relay.${name}.${var.domain}" }

  # A relay link between two regions needs one side to dial (the relay keeps
  # one link per pair), so of every pair the region whose name sorts first
  # dials the other: region i of the sorted names dials regions i+1.. .
  relay_peers = {
    for i, name in local.region_names : name => [
      for j, other in local.region_names : { addr = "${local.relay_ips[other]}:${var.relay_port}" } if j > i
    ]
  }
  relay_peer_regions = {
    for i, name in local.region_names : name => [for j, other in local.region_names : other if j > i]
  }

  # The chart's control_plane.calls.regions: every region of the cluster.
  calls_regions = [
    for name in local.region_names : {
      name      = name
      latitude  = var.regions[name].latitude
      longitude = var.regions[name].longitude
    }
  ]

  # The values of the Helm release of each region (helm/cascade's contract).
  helm_values = {
    for name, r in var.regions : name => {
      image = {
        repository = var.image.repository
        tag        = var.image.tag
        pullPolicy = var.image.pull_policy
      }
      region = name
      domain = var.domain
      controlPlane = {
        enabled       = r.control_plane
        url           = r.control_plane ? "" : local.control_plane_url
        host          = local.api_host
        regions       = local.calls_regions
        defaultRegion = local.default_region
        replicas      = var.control_plane_replicas
        database      = { existingSecret = var.secret_names.database, key = "url" }
        redis         = { existingSecret = var.secret_names.redis, key = "url" }
      }
      edge = {
        enabled      = true
        replicas     = r.edge_count
        network      = "loadBalancer"
        publicIPs    = local.edge_ips[name]
        mediaPort    = var.media_port
        hostTemplate = local.edge_host_template
      }
      relay = {
        enabled  = true
        publicIP = local.relay_ips[name]
        peers    = local.relay_peers[name]
      }
      secrets = { existingSecret = var.secret_names.cluster }
      tls     = { existingSecret = var.secret_names.relay_tls }
    }
  }

  # DNS: A records of each region's relay and edges, and api.<domain> (with
  # the control-plane region) once its Ingress address is known.
  api_records = var.control_plane_ingress_ip == null ? [] : [
    { name = local.api_host, type = "A", value = var.control_plane_ingress_ip }
  ]
  dns_records_by_region = {
    for name, r in var.regions : name => concat(
      r.control_plane ? local.api_records : [],
      [{ name = local.relay_hosts[name], type = "A", value = local.relay_ips[name] }],
      [for i in range(r.edge_count) : { name = local.edge_hosts[name][i], type = "A", value = local.edge_ips[name][i] }],
    )
  }
  dns_records = flatten([for name in local.region_names : local.dns_records_by_region[name]])
}
