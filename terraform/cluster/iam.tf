# Least privilege for nodes: SSM Session Manager, this cluster's token, the results bucket only.
resource "aws_iam_role" "node" {
  name               = "${var.project}-node"
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

resource "aws_iam_role_policy_attachment" "ssm_core" {
  role       = aws_iam_role.node.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_role_policy" "node" {
  name   = "results-bucket-and-ray-token"
  role   = aws_iam_role.node.id
  policy = data.aws_iam_policy_document.node.json
}

data "aws_iam_policy_document" "node" {
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
    resources = [aws_ssm_parameter.ray_token.arn]
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

# Ray token authentication: a second lock behind the security groups. Nodes read it at boot.
resource "random_password" "ray_token" {
  length  = 48
  special = false
}

resource "aws_ssm_parameter" "ray_token" {
  name   = "/${var.project}/ray-auth-token"
  type   = "SecureString"
  key_id = aws_kms_key.cluster.arn
  value  = random_password.ray_token.result
}

data "aws_caller_identity" "current" {}

resource "aws_kms_key" "cluster" {
  description             = "${var.project} cluster: Ray token, flow logs"
  enable_key_rotation     = true
  deletion_window_in_days = 7
  policy                  = data.aws_iam_policy_document.kms.json
}

data "aws_iam_policy_document" "kms" {
  # A key policy's "*" is the key itself; the account root administers it (AWS's default policy).
  #checkov:skip=CKV_AWS_111:key policy resource "*" means this key only
  #checkov:skip=CKV_AWS_356:key policy resource "*" means this key only
  #checkov:skip=CKV_AWS_109:the account root must administer its own key (AWS default key policy)
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid       = "FlowLogsEncrypt"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
  }
}
