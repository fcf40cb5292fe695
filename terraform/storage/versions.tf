terraform {
  required_version = ">= 1.11"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
  # Optional remote state with locking: see ../README.md ("Remote state").
}

provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}
