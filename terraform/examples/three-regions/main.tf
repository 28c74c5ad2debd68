# Three regions of one Cascade cluster: the control plane in us-east, edges
# and a relay in each region. The addresses are documentation ranges
# (RFC 5737): put the static public IPs reserved for each region there.

locals {
  regions = {
    us-east = {
      latitude       = 39.0
      longitude      = -77.5
      kube_context   = var.kube_contexts["us-east"]
      edge_count     = 2
      public_ip_cidr = "203.0.113.0/24"
      control_plane  = true
    }
    eu-west = {
      latitude       = 53.3
      longitude      = -6.3
      kube_context   = var.kube_contexts["eu-west"]
      edge_count     = 2
      public_ip_cidr = "198.51.100.0/24"
    }
    ap-south = {
      latitude       = 19.1
      longitude      = 72.9
      kube_context   = var.kube_contexts["ap-south"]
      edge_count     = 1
      public_ip_cidr = "192.0.2.0/24"
    }
  }
}

# Each region's link certificates, by node id (cascade-plan's node_ids):
# `cascade certs --out certs --relay us-east-relay eu-west-relay
# ap-south-relay --edge us-east-edge-0 us-east-edge-1 eu-west-edge-0
# eu-west-edge-1 ap-south-edge-0`. A region's Secret holds only its own
# nodes' keys.
locals {
  relay_tls = {
    for region, ids in module.plan.node_ids : region => {
      ca = file("${var.certs_dir}/ca.pem")
      nodes = {
        for id in concat([ids.relay], ids.edges) : id => {
          cert = file("${var.certs_dir}/${id}.pem")
          key  = sensitive(file("${var.certs_dir}/${id}.key"))
        }
      }
    }
  }
}

module "plan" {
  source = "../../modules/cascade-plan"

  regions                  = local.regions
  domain                   = var.domain
  image                    = var.image
  control_plane_ingress_ip = var.control_plane_ingress_ip
}

# One module block per region: providers cannot be chosen per for_each
# instance (see providers.tf).

module "us_east" {
  source = "../../modules/cascade-region"
  providers = {
    helm       = helm.us_east
    kubernetes = kubernetes.us_east
    aws        = aws
  }

  values         = module.plan.helm_values["us-east"]
  release_name   = module.plan.release_name
  cluster_secret = var.cluster_secret
  relay_tls      = local.relay_tls["us-east"]
  database_url   = var.database_url
  redis_url      = var.redis_url
  dns_zone_id    = var.route53_zone_id
  dns_records    = module.plan.dns_records_by_region["us-east"]
}

module "eu_west" {
  source = "../../modules/cascade-region"
  providers = {
    helm       = helm.eu_west
    kubernetes = kubernetes.eu_west
    aws        = aws
  }

  values         = module.plan.helm_values["eu-west"]
  release_name   = module.plan.release_name
  cluster_secret = var.cluster_secret
  relay_tls      = local.relay_tls["eu-west"]
  dns_zone_id    = var.route53_zone_id
  dns_records    = module.plan.dns_records_by_region["eu-west"]
}

module "ap_south" {
  source = "../../modules/cascade-region"
  providers = {
    helm       = helm.ap_south
    kubernetes = kubernetes.ap_south
    aws        = aws
  }

  values         = module.plan.helm_values["ap-south"]
  release_name   = module.plan.release_name
  cluster_secret = var.cluster_secret
  relay_tls      = local.relay_tls["ap-south"]
  dns_zone_id    = var.route53_zone_id
  dns_records    = module.plan.dns_records_by_region["ap-south"]
}
