# The cluster's Ray auth token, generated and stored as an SSM SecureString without ever being in
# a plan or the state: an ephemeral password into a write-only argument (Terraform >= 1.11).
# Bump `token_version` to generate and store a new one (then replace the nodes: they read it at boot).
terraform {
  required_providers {
    aws = {
      source = "hashicorp/aws"
    }
  }
}

variable "name" {
  description = "SSM parameter name."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key encrypting the parameter."
  type        = string
}

variable "token_version" {
  description = "Version of the write-only value: a new number stores a new token."
  type        = number
}

ephemeral "aws_secretsmanager_random_password" "token" {
  password_length     = 48
  exclude_punctuation = true
}

resource "aws_ssm_parameter" "token" {
  name             = var.name
  type             = "SecureString"
  key_id           = var.kms_key_arn
  value_wo         = ephemeral.aws_secretsmanager_random_password.token.random_password
  value_wo_version = var.token_version
}

output "name" {
  description = "SSM parameter holding the token."
  value       = aws_ssm_parameter.token.name
}

output "arn" {
  description = "ARN of that parameter (the nodes may read it)."
  value       = aws_ssm_parameter.token.arn
}
