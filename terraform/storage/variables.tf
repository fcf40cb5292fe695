variable "region" {
  description = "AWS region of the bucket (the cluster's region)."
  type        = string
  default     = "us-west-2"
  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-\\d$", var.region))
    error_message = "region must look like us-west-2."
  }
}

variable "project" {
  description = "Name prefix and Project tag."
  type        = string
  default     = "carla-rl"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.project))
    error_message = "project: 2-21 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "noncurrent_version_days" {
  description = "Days to keep overwritten or deleted object versions (checkpoints) before expiry."
  type        = number
  default     = 30
  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be >= 1."
  }
}
