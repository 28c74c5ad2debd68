# The computed plan of a three-region cluster. The module has no providers
# and no resources, so `command = plan` evaluates every output.

variables {
  domain = "example.com"
  image  = { repository = "ghcr.io/example/cascade", tag = "1.2.3" }
  regions = {
    us-east = {
      latitude       = 39.0
      longitude      = -77.5
      kube_context   = "us-east"
      edge_count     = 2
      public_ip_cidr = "203.0.113.0/24"
      control_plane  = true
    }
    eu-west = {
      latitude       = 53.3
      longitude      = -6.3
      kube_context   = "eu-west"
      edge_count     = 3
      public_ip_cidr = "198.51.100.0/24"
    }
    ap-south = {
      latitude       = 19.1
      longitude      = 72.9
      kube_context   = "ap-south"
      edge_count     = 1
      public_ip_cidr = "192.0.2.0/24"
    }
  }
}

run "addresses" {
  command = plan

  assert {
    condition     = output.relay_ips == { us-east = "203.0.113.10", eu-west = "198.51.100.10", ap-south = "192.0.2.10" }
    error_message = "relay IPs are not host 10 of each range: ${jsonencode(output.relay_ips)}"
  }

  assert {
    condition = output.edge_ips == {
      us-east  = ["203.0.113.20", "203.0.113.21"]
      eu-west  = ["198.51.100.20", "198.51.100.21", "198.51.100.22"]
      ap-south = ["192.0.2.20"]
    }
    error_message = "edge IPs are not hosts 20.. of each range: ${jsonencode(output.edge_ips)}"
  }

  assert {
    condition     = length(distinct(concat(values(output.relay_ips), flatten(values(output.edge_ips))))) == 3 + 6
    error_message = "an address is handed out twice"
  }
}

run "relay_peers" {
  command = plan

  assert {
    condition     = output.region_names == tolist(["ap-south", "eu-west", "us-east"])
    error_message = "regions are not sorted: ${jsonencode(output.region_names)}"
  }

  # The first name dials every later one; the last dials nobody.
  assert {
    condition = output.relay_peers == {
      ap-south = [{ addr = "198.51.100.10:4470" }, { addr = "203.0.113.10:4470" }]
      eu-west  = [{ addr = "203.0.113.10:4470" }]
      us-east  = []
    }
    error_message = "unexpected relay peers: ${jsonencode(output.relay_peers)}"
  }

  # Every unordered pair of regions exactly once, never a region itself.
  assert {
    condition     = length(flatten(values(output.relay_peer_regions))) == 3
    error_message = "3 regions need 3 links: ${jsonencode(output.relay_peer_regions)}"
  }
  assert {
    condition = length(distinct(flatten([
      for from, tos in output.relay_peer_regions : [for to in tos : join("|", sort([from, to]))]
    ]))) == 3
    error_message = "a pair of regions is dialed from both sides: ${jsonencode(output.relay_peer_regions)}"
  }
  assert {
    condition     = alltrue([for from, tos in output.relay_peer_regions : !contains(tos, from)])
    error_message = "a relay dials itself"
  }

  # The values carry the same peers.
  assert {
    condition     = alltrue([for name, v in output.helm_values : v.relay.peers == output.relay_peers[name] && v.relay.publicIP == output.relay_ips[name]])
    error_message = "the Helm values' relay section differs from relay_peers/relay_ips"
  }
}

run "control_plane" {
  command = plan

  assert {
    condition     = output.control_plane_region == "us-east"
    error_message = "control-plane region: ${output.control_plane_region}"
  }
  assert {
    condition     = length([for name, v in output.helm_values : name if v.controlPlane.enabled]) == 1
    error_message = "exactly one release must enable the control plane"
  }
  assert {
    condition     = output.helm_values["us-east"].controlPlane.enabled && output.helm_values["us-east"].controlPlane.url == ""
    error_message = "the control-plane region runs it and needs no url"
  }
  assert {
    condition     = alltrue([for name in ["eu-west", "ap-south"] : !output.helm_values[name].controlPlane.enabled && output.helm_values[name].controlPlane.url == "https://api.example.com"])
    error_message = "other regions must reach the control plane at https://api.example.com"
  }
  assert {
    condition     = alltrue([for v in output.helm_values : v.controlPlane.host == "api.example.com" && v.controlPlane.defaultRegion == "us-east"])
    error_message = "host or defaultRegion wrong"
  }
  assert {
    condition = output.helm_values["eu-west"].controlPlane.regions == [
      { name = "ap-south", latitude = 19.1, longitude = 72.9 },
      { name = "eu-west", latitude = 53.3, longitude = -6.3 },
      { name = "us-east", latitude = 39.0, longitude = -77.5 },
    ]
    error_message = "controlPlane.regions must list every region: ${jsonencode(output.helm_values["eu-west"].controlPlane.regions)}"
  }
}

run "helm_values" {
  command = plan

  assert {
    condition     = alltrue([for name, r in var.regions : length(output.helm_values[name].edge.publicIPs) == r.edge_count && output.helm_values[name].edge.replicas == r.edge_count])
    error_message = "edge.publicIPs must hold one address per edge replica"
  }
  assert {
    condition     = alltrue([for name, v in output.helm_values : v.region == name && v.domain == "example.com"])
    error_message = "region/domain wrong"
  }
  assert {
    condition = output.helm_values["ap-south"] == {
      image  = { repository = "ghcr.io/example/cascade", tag = "1.2.3", pullPolicy = "IfNotPresent" }
      region = "ap-south"
      domain = "example.com"
      controlPlane = {
        enabled       = false
        url           = "https://api.example.com"
        host          = "api.example.com"
        regions       = output.helm_values["ap-south"].controlPlane.regions
        defaultRegion = "us-east"
        replicas      = 2
        database      = { existingSecret = "cascade-db", key = "url" }
        redis         = { existingSecret = "cascade-redis", key = "url" }
      }
      edge = {
        enabled      = true
        replicas     = 1
        network      = "loadBalancer"
        publicIPs    = ["192.0.2.20"]
        mediaPort    = 50000
        hostTemplate = "{pod}.{region}.{domain}"
      }
      relay = {
        enabled  = true
        publicIP = "192.0.2.10"
        peers    = [{ addr = "198.51.100.10:4470" }, { addr = "203.0.113.10:4470" }]
      }
      secrets = { existingSecret = "cascade-cluster" }
      tls     = { existingSecret = "cascade-relay-tls" }
    }
    error_message = "ap-south values differ from the chart contract: ${output.helm_values_yaml["ap-south"]}"
  }
  assert {
    condition     = yamldecode(output.helm_values_yaml["us-east"]).edge.publicIPs == ["203.0.113.20", "203.0.113.21"]
    error_message = "helm_values_yaml does not round-trip"
  }
}

run "dns_without_ingress_ip" {
  command = plan

  assert {
    condition     = !contains([for r in output.dns_records : r.name], "api.example.com")
    error_message = "api.example.com has no address yet and must not be a record"
  }
  assert {
    condition     = jsonencode(output.missing_dns_records) == jsonencode([{ name = "api.example.com", type = "A", needs = "control_plane_ingress_ip" }])
    error_message = "missing_dns_records must name api.example.com"
  }
  assert {
    condition     = length(output.dns_records) == 3 + 6
    error_message = "one record per relay and per edge: ${jsonencode(output.dns_records)}"
  }
  assert {
    condition = output.dns_records_by_region["eu-west"] == [
      { name = "relay.eu-west.example.com", type = "A", value = "198.51.100.10" },
      { name = "cascade-edge-0.eu-west.example.com", type = "A", value = "198.51.100.20" },
      { name = "cascade-edge-1.eu-west.example.com", type = "A", value = "198.51.100.21" },
      { name = "cascade-edge-2.eu-west.example.com", type = "A", value = "198.51.100.22" },
    ]
    error_message = "eu-west records: ${jsonencode(output.dns_records_by_region["eu-west"])}"
  }
  assert {
    condition     = output.edge_hosts["us-east"] == ["cascade-edge-0.us-east.example.com", "cascade-edge-1.us-east.example.com"]
    error_message = "edge hosts must be <release>-edge-<i>.<region>.<domain>"
  }
  assert {
    condition     = length(distinct([for r in output.dns_records : r.name])) == length(output.dns_records)
    error_message = "a DNS name appears twice"
  }
}

run "dns_with_ingress_ip" {
  command = plan

  variables {
    control_plane_ingress_ip = "203.0.113.5"
  }

  assert {
    condition     = output.dns_records_by_region["us-east"][0] == { name = "api.example.com", type = "A", value = "203.0.113.5" }
    error_message = "api.example.com goes first with the control-plane region: ${jsonencode(output.dns_records_by_region["us-east"])}"
  }
  assert {
    condition     = length([for r in output.dns_records : r if r.name == "api.example.com"]) == 1 && length(output.dns_records) == 10
    error_message = "api.example.com must be in dns_records once"
  }
  assert {
    condition     = length(output.missing_dns_records) == 0
    error_message = "nothing is missing once the ingress IP is known"
  }
}

run "options" {
  command = plan

  variables {
    release_name           = "rtc"
    default_region         = "eu-west"
    control_plane_replicas = 3
    media_port             = 40000
    relay_port             = 5000
    secret_names           = { cluster = "my-cluster" }
    image                  = { repository = "r", tag = "t", pull_policy = "Always" }
  }

  assert {
    condition     = output.edge_hosts["ap-south"] == ["rtc-edge-0.ap-south.example.com"]
    error_message = "edge hosts follow release_name"
  }
  assert {
    condition     = output.relay_peers["eu-west"] == [{ addr = "203.0.113.10:5000" }]
    error_message = "peers use relay_port"
  }
  assert {
    condition = alltrue([for v in output.helm_values : (
      v.controlPlane.defaultRegion == "eu-west" && v.controlPlane.replicas == 3 && v.edge.mediaPort == 40000 &&
      v.secrets.existingSecret == "my-cluster" && v.tls.existingSecret == "cascade-relay-tls" && v.image.pullPolicy == "Always"
    )])
    error_message = "options not carried into the values"
  }
}

# One region: no relay peers, the control plane local.
run "single_region" {
  command = apply # no providers, no resources: apply is free

  variables {
    regions = {
      solo = {
        latitude       = 0
        longitude      = 0
        kube_context   = "kind-solo"
        edge_count     = 100
        public_ip_cidr = "198.18.0.0/25" # 128 addresses: 20 + 100 fit
        control_plane  = true
      }
    }
  }

  assert {
    condition     = output.relay_peers == { solo = [] }
    error_message = "a single relay dials nobody"
  }
  assert {
    condition     = length(output.edge_ips["solo"]) == 100 && output.edge_ips["solo"][99] == "198.18.0.119"
    error_message = "100 edges at hosts 20..119: ${jsonencode(output.edge_ips["solo"])}"
  }
  assert {
    condition     = output.helm_values["solo"].controlPlane.enabled && output.control_plane_region == "solo"
    error_message = "the only region runs the control plane"
  }
}

run "node_ids" {
  command = plan

  # Cluster-wide node ids (the chart's): pod names repeat in every region,
  # node ids and their link certificates must not.
  assert {
    condition = output.node_ids == {
      us-east  = { relay = "us-east-relay", edges = ["us-east-edge-0", "us-east-edge-1"] }
      eu-west  = { relay = "eu-west-relay", edges = ["eu-west-edge-0", "eu-west-edge-1", "eu-west-edge-2"] }
      ap-south = { relay = "ap-south-relay", edges = ["ap-south-edge-0"] }
    }
    error_message = "node ids: ${jsonencode(output.node_ids)}"
  }
  assert {
    condition     = length(distinct(flatten([for r in values(output.node_ids) : concat([r.relay], r.edges)]))) == 3 + 6
    error_message = "node ids repeat across regions"
  }
}
