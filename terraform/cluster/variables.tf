variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-west-2"
  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-\\d$", var.region))
    error_message = "region must look like us-west-2."
  }
}

variable "project" {
  description = "Name prefix and Project tag (the storage stack's project)."
  type        = string
  default     = "carla-rl"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.project))
    error_message = "project: 2-21 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "ami_id" {
  description = "The CARLA AMI from `make ami` (written to ami.auto.tfvars.json)."
  type        = string
  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be an AMI id (ami-...): run `make ami` first."
  }
}

variable "bucket_name" {
  description = "Results bucket of the storage stack (terraform/storage output bucket_name)."
  type        = string
}

variable "bucket_kms_key_arn" {
  description = "KMS key of the results bucket (terraform/storage output kms_key_arn)."
  type        = string
}

variable "flow_log_group_arn" {
  description = "CloudWatch Logs group for VPC flow logs (terraform/storage output flow_log_group_arn)."
  type        = string
}

variable "ray_token_version" {
  description = "Version of the write-only Ray token: bump it to generate and store a new token."
  type        = number
  default     = 1
}

variable "vpc_cidr" {
  description = "CIDR of the cluster's VPC."
  type        = string
  default     = "10.42.0.0/16"
  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be a valid CIDR of /20 or larger."
  }
}

variable "az_count" {
  description = "Availability zones (one private subnet each): more AZs, more spot capacity."
  type        = number
  default     = 2
  validation {
    condition     = var.az_count >= 1 && var.az_count <= 4
    error_message = "az_count must be 1 to 4."
  }
}

variable "head_instance_type" {
  description = "On-demand head node (runs the trainer's learner: a GPU type)."
  type        = string
  default     = "g5.2xlarge"
}

variable "worker_instance_types" {
  description = "Spot GPU worker types, most preferred first (mixed for capacity)."
  type        = list(string)
  default     = ["g5.2xlarge", "g5.4xlarge", "g6.2xlarge", "g4dn.2xlarge"]
  validation {
    condition     = length(var.worker_instance_types) >= 1
    error_message = "give at least one worker instance type."
  }
}

variable "worker_min" {
  description = "Minimum spot workers."
  type        = number
  default     = 0
  validation {
    condition     = var.worker_min >= 0
    error_message = "worker_min must be >= 0."
  }
}

variable "worker_desired" {
  description = "Spot workers to run."
  type        = number
  default     = 2
  validation {
    condition     = var.worker_desired >= 0
    error_message = "worker_desired must be >= 0."
  }
}

variable "worker_max" {
  description = "Upper bound on spot workers (the cost cap)."
  type        = number
  default     = 8
  validation {
    condition     = var.worker_max >= 0 && var.worker_max <= 64
    error_message = "worker_max must be 0 to 64."
  }
}

variable "root_volume_gb" {
  description = "Encrypted gp3 root volume per node (CARLA is ~20 GB, AdditionalMaps more)."
  type        = number
  default     = 150
  validation {
    condition     = var.root_volume_gb >= 120
    error_message = "root_volume_gb must be >= 120: the AMI's snapshot is 120 GB (packer volume_size)."
  }
}

variable "ray_port" {
  description = "Ray GCS port on the head (intra-cluster only)."
  type        = number
  default     = 6379
}

variable "dashboard_port" {
  description = "Ray dashboard / Jobs API port, bound to the head's private address (reach it by SSM port forward)."
  type        = number
  default     = 8265
}
