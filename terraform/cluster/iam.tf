# Least privilege for nodes: what the SSM agent needs for Session Manager and Run Command (not
# AmazonSSMManagedInstanceCore, whose ssm:GetParameter(s) on "*" would let any job, which runs
# arbitrary code, read every parameter in the account), this cluster's token, the results bucket.
resource "aws_iam_role" "node" {
  name               = "${var.project}-node" # terraform/storage/main.tf's bucket policy names it
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "node" {
  name   = "ssm-agent-results-bucket-ray-token"
  role   = aws_iam_role.node.id
  policy = data.aws_iam_policy_document.node.json
}

locals {
  account_id = data.aws_caller_identity.current.account_id
}

data "aws_iam_policy_document" "node" {
  statement {
    sid       = "SsmAgentRegisters"
    actions   = ["ssm:UpdateInstanceInformation", "ssm:ListInstanceAssociations"]
    resources = ["arn:aws:ec2:${var.region}:${local.account_id}:instance/*"]
  }
  # These actions support no resource-level permissions: "*" is the only form AWS accepts.
  statement {
    sid = "SsmAgentChannels"
    actions = [
      "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel",
      "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage", "ec2messages:FailMessage",
      "ec2messages:GetEndpoint", "ec2messages:GetMessages", "ec2messages:SendReply",
    ]
    resources = ["*"]
  }
  statement {
    sid       = "ListResults"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = ["arn:aws:s3:::${var.bucket_name}"]
  }
  statement {
    sid       = "ReadWriteResults"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["arn:aws:s3:::${var.bucket_name}/*"]
  }
  statement {
    sid       = "BucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.bucket_kms_key_arn]
  }
  statement {
    sid       = "RayToken"
    actions   = ["ssm:GetParameter"]
    resources = [module.ray_token.arn]
  }
  statement {
    sid       = "RayTokenKey"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.cluster.arn]
  }
}

resource "aws_iam_instance_profile" "node" {
  name = "${var.project}-node"
  role = aws_iam_role.node.name
}

# Ray token authentication: a second lock behind the security groups. Nodes read it at boot; it is
# in neither the plan nor the state (see the module).
module "ray_token" {
  source        = "../modules/ray-token"
  name          = "/${var.project}/ray-auth-token"
  kms_key_arn   = aws_kms_key.cluster.arn
  token_version = var.ray_token_version
}

data "aws_caller_identity" "current" {}

resource "aws_kms_key" "cluster" {
  description             = "${var.project} cluster: Ray token"
  enable_key_rotation     = true
  deletion_window_in_days = 7
  policy                  = module.cluster_key_policy.json
}

module "cluster_key_policy" {
  source     = "../modules/kms-key-policy"
  account_id = local.account_id
  region     = var.region
}
