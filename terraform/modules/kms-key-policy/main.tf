# The one key policy every KMS key of this project uses (results bucket, flow logs, Ray token):
# the account administers its key (AWS's default key policy), and CloudWatch Logs may use it only
# for the log groups named here. Plain HCL, no provider: both stacks call it, tests render it.
variable "account_id" {
  description = "AWS account that owns and administers the key."
  type        = string
  validation {
    condition     = can(regex("^[0-9]{12}$", var.account_id))
    error_message = "account_id must be a 12-digit AWS account id."
  }
}

variable "region" {
  description = "Region of the key (CloudWatch Logs' service principal is regional)."
  type        = string
}

variable "log_group_arns" {
  description = "CloudWatch Logs groups allowed to encrypt with the key; empty: no service use."
  type        = list(string)
  default     = []
}

locals {
  account_administers = {
    Sid       = "AccountAdministers"
    Effect    = "Allow"
    Principal = { AWS = "arn:aws:iam::${var.account_id}:root" }
    Action    = "kms:*"
    Resource  = "*" # in a key policy "*" is this key only
  }
  # The encryption context names the log group (and so this account): only these groups, only
  # CloudWatch Logs of this account and region, can use the key.
  logs_encrypt = {
    Sid       = "CloudWatchLogsEncrypt"
    Effect    = "Allow"
    Principal = { Service = "logs.${var.region}.amazonaws.com" }
    Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    Resource  = "*"
    Condition = { ArnEquals = { "kms:EncryptionContext:aws:logs:arn" = var.log_group_arns } }
  }
}

output "json" {
  description = "The key policy document."
  value = jsonencode({
    Version   = "2012-10-17"
    Statement = concat([local.account_administers], length(var.log_group_arns) > 0 ? [local.logs_encrypt] : [])
  })
}
