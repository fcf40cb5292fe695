terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
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
