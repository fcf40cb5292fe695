# What outlives every cluster: checkpoints and results, and the VPC flow logs with their 365 days
# of retention. Its own state: `make cluster-down` never touches it, and prevent_destroy refuses a
# stray destroy here too.
locals {
  tags = { Project = var.project, ManagedBy = "terraform", Component = "storage" }
  # The cluster stack's node role (terraform/cluster/iam.tf names it so).
  node_role_arn      = "arn:aws:iam::${data.aws_caller_identity.current.account_id}:role/${var.project}-node"
  flow_log_group_arn = "arn:aws:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:/${var.project}/vpc-flow-logs"
}

data "aws_caller_identity" "current" {}

resource "aws_s3_bucket" "results" {
  #checkov:skip=CKV_AWS_18:access logs would need a second bucket per project; CloudTrail S3 data events are the audit path
  #checkov:skip=CKV_AWS_144:checkpoints are reproducible; cross-region replication doubles storage cost
  #checkov:skip=CKV2_AWS_62:nothing consumes bucket events; training writes and ops reads directly
  bucket = "${var.project}-results-${data.aws_caller_identity.current.account_id}-${var.region}"
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_s3_bucket_versioning" "results" {
  bucket = aws_s3_bucket.results.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "results" {
  bucket = aws_s3_bucket.results.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.results.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_kms_key" "results" {
  description             = "${var.project} results bucket"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = module.results_key_policy.json
  lifecycle {
    prevent_destroy = true # without it every checkpoint in the bucket is unreadable
  }
}

module "results_key_policy" {
  source     = "../modules/kms-key-policy"
  account_id = data.aws_caller_identity.current.account_id
  region     = var.region
}

resource "aws_s3_bucket_public_access_block" "results" {
  bucket                  = aws_s3_bucket.results.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "results" {
  bucket = aws_s3_bucket.results.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_policy" "results" {
  bucket = aws_s3_bucket.results.id
  policy = data.aws_iam_policy_document.results.json
  # A policy put before the block exists could be public for a moment; AWS also refuses some
  # policy/block orders with a 403 when they race.
  depends_on = [aws_s3_bucket_public_access_block.results]
}

data "aws_iam_policy_document" "results" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.results.arn, "${aws_s3_bucket.results.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
  # The nodes' credentials work on this bucket only through a VPC endpoint (the cluster's S3
  # gateway endpoint, whose own policy admits this bucket only): stolen node credentials used from
  # outside the VPC are refused.
  statement {
    sid       = "DenyNodeRoleOutsideVpcEndpoint"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.results.arn, "${aws_s3_bucket.results.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:PrincipalArn"
      values   = [local.node_role_arn]
    }
    condition {
      test     = "Null"
      variable = "aws:SourceVpce"
      values   = ["true"]
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "results" {
  bucket = aws_s3_bucket.results.id
  rule {
    id     = "expire-old-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

# VPC flow logs of every cluster: here, not in the cluster stack, so `make cluster-down` keeps the
# 365 days of retention (and the key that decrypts them).
resource "aws_cloudwatch_log_group" "flow_logs" {
  name              = "/${var.project}/vpc-flow-logs"
  retention_in_days = 365
  kms_key_id        = aws_kms_key.logs.arn
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_kms_key" "logs" {
  description             = "${var.project} VPC flow logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = module.logs_key_policy.json
  lifecycle {
    prevent_destroy = true
  }
}

module "logs_key_policy" {
  source         = "../modules/kms-key-policy"
  account_id     = data.aws_caller_identity.current.account_id
  region         = var.region
  log_group_arns = [local.flow_log_group_arn]
}
