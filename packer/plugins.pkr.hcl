# Kept alone: Debian's packer 1.6.6 cannot parse required_plugins, so `packer validate
# -syntax-only` runs on carla-ami.pkr.hcl without this file (see ops/infra_check.py).
packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = "~> 1.3" # 1.x from 1.3 on: no unreviewed major version
    }
  }
}
