# Each run breaks one rule of one input and expects that input's
# validation to fail (and nothing else).

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
      edge_count     = 2
      public_ip_cidr = "198.51.100.0/24"
    }
  }
}

# The shared inputs above are valid.
run "valid" {
  command = plan
}

run "no_control_plane_region" {
  command = plan
  variables {
    regions = {
      us-east = { latitude = 39.0, longitude = -77.5, kube_context = "a", edge_count = 2, public_ip_cidr = "203.0.113.0/24" }
      eu-west = { latitude = 53.3, longitude = -6.3, kube_context = "b", edge_count = 2, public_ip_cidr = "198.51.100.0/24", control_plane = false }
    }
  }
  expect_failures = [var.regions]
}

run "two_control_plane_regions" {
  command = plan
  variables {
    regions = {
      us-east = { latitude = 39.0, longitude = -77.5, kube_context = "a", edge_count = 2, public_ip_cidr = "203.0.113.0/24", control_plane = true }
      eu-west = { latitude = 53.3, longitude = -6.3, kube_context = "b", edge_count = 2, public_ip_cidr = "198.51.100.0/24", control_plane = true }
    }
  }
  expect_failures = [var.regions]
}

run "no_regions" {
  command = plan
  variables {
    regions = {}
  }
  expect_failures = [var.regions]
}

run "edge_count_zero" {
  command = plan
  variables {
    regions = {
      us-east = { latitude = 39.0, longitude = -77.5, kube_context = "a", edge_count = 0, public_ip_cidr = "203.0.113.0/24", control_plane = true }
    }
  }
  expect_failures = [var.regions]
}

run "edge_count_101" {
  command = plan
  variables {
    regions = {
      us-east = { latitude = 39.0, longitude = -77.5, kube_context = "a", edge_count = 101, public_ip_cidr = "203.0.113.0/24", control_plane = true }
    }
  }
  expect_failures = [var.regions]
}

run "edge_count_fractional" {
  command = plan
  variables {
    regions = {
      us-east = { latitude = 39.0, longitude = -77.5, kube_context = "a", edge_count = 1.5, public_ip_cidr = "203.0.113.0/24", control_plane = true }
    }
  }
  expect_failures = [var.regions]
}

run "cidr_too_small" {
  command = plan
  variables {
    regions = {
      # A /27 holds 32 addresses: 20 + 12 edges fit, 13 do not.
      us-east = { latitude = 39.0, longitude = -77.5, kube_context = "a", edge_count = 13, public_ip_cidr = "203.0.113.0/27", control_plane = true }
    }
  }
  expect_failures = [var.regions]
}

run "cidr_just_big_enough" {
  command = plan
  variables {
    regions = {
      us-east = { latitude = 39.0, longitude = -77.5, kube_context = "a", edge_count = 12, public_ip_cidr = "203.0.113.0/27", control_plane = true }
    }
  }
  assert {
    condition     = output.edge_ips["us-east"][11] == "203.0.113.31"
    error_message = "the last edge of a full /27 is host 31"
  }
}

run "cidr_invalid" {
  command = plan
  variables {
    regions = {
      us-east = { latitude = 39.0, longitude = -77.5, kube_context = "a", edge_count = 2, public_ip_cidr = "203.0.113.7", control_plane = true }
    }
  }
  expect_failures = [var.regions]
}

run "cidrs_overlap" {
  command = plan
  variables {
    regions = {
      us-east = { latitude = 39.0, longitude = -77.5, kube_context = "a", edge_count = 2, public_ip_cidr = "203.0.113.0/24", control_plane = true }
      eu-west = { latitude = 53.3, longitude = -6.3, kube_context = "b", edge_count = 2, public_ip_cidr = "203.0.113.0/25" }
    }
  }
  expect_failures = [var.regions]
}

run "region_name_upper_case" {
  command = plan
  variables {
    regions = {
      US-East = { latitude = 39.0, longitude = -77.5, kube_context = "a", edge_count = 2, public_ip_cidr = "203.0.113.0/24", control_plane = true }
    }
  }
  expect_failures = [var.regions]
}

run "region_name_underscore" {
  command = plan
  variables {
    regions = {
      us_east = { latitude = 39.0, longitude = -77.5, kube_context = "a", edge_count = 2, public_ip_cidr = "203.0.113.0/24", control_plane = true }
    }
  }
  expect_failures = [var.regions]
}

run "region_name_leading_dash" {
  command = plan
  variables {
    regions = {
      "-east" = { latitude = 39.0, longitude = -77.5, kube_context = "a", edge_count = 2, public_ip_cidr = "203.0.113.0/24", control_plane = true }
    }
  }
  expect_failures = [var.regions]
}

run "region_name_too_long" {
  command = plan
  variables {
    regions = {
      "a23456789012345678901234567890123" = { latitude = 39.0, longitude = -77.5, kube_context = "a", edge_count = 2, public_ip_cidr = "203.0.113.0/24", control_plane = true }
    }
  }
  expect_failures = [var.regions]
}

run "latitude_out_of_range" {
  command = plan
  variables {
    regions = {
      us-east = { latitude = 91, longitude = -77.5, kube_context = "a", edge_count = 2, public_ip_cidr = "203.0.113.0/24", control_plane = true }
    }
  }
  expect_failures = [var.regions]
}

run "empty_kube_context" {
  command = plan
  variables {
    regions = {
      us-east = { latitude = 39.0, longitude = -77.5, kube_context = " ", edge_count = 2, public_ip_cidr = "203.0.113.0/24", control_plane = true }
    }
  }
  expect_failures = [var.regions]
}

run "bad_domain" {
  command = plan
  variables {
    domain = "https://Example.com/"
  }
  expect_failures = [var.domain]
}

run "bad_image" {
  command = plan
  variables {
    image = { repository = "ghcr.io/example/cascade", tag = "" }
  }
  expect_failures = [var.image]
}

run "bad_pull_policy" {
  command = plan
  variables {
    image = { repository = "ghcr.io/example/cascade", tag = "1", pull_policy = "always" }
  }
  expect_failures = [var.image]
}

run "bad_ingress_ip" {
  command = plan
  variables {
    control_plane_ingress_ip = "lb.example.net"
  }
  expect_failures = [var.control_plane_ingress_ip]
}

run "unknown_default_region" {
  command = plan
  variables {
    default_region = "mars"
  }
  expect_failures = [var.default_region]
}

run "bad_release_name" {
  command = plan
  variables {
    release_name = "Cascade"
  }
  expect_failures = [var.release_name]
}

run "bad_media_port" {
  command = plan
  variables {
    media_port = 70000
  }
  expect_failures = [var.media_port]
}

run "bad_secret_name" {
  command = plan
  variables {
    secret_names = { database = "DB_URL" }
  }
  expect_failures = [var.secret_names]
}
