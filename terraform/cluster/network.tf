# Private subnets only: no internet gateway, no NAT, no public IPs. SSM and S3 are reached through
# VPC endpoints (S3 gateway: free; 3 interface endpoints x az_count: about $0.01/h each, ~$44/month
# at 2 AZs, cheaper than a NAT gateway's $0.045/h + data and with no path to the internet).
# Everything a node runs is baked into the AMI; jobs bring the repo through the Ray Jobs API.
data "aws_availability_zones" "available" {
  state = "available"
  filter { # a closed set: a zone AWS adds later never moves subnets
    name   = "zone-name"
    values = [for suffix in ["a", "b", "c", "d"] : "${var.region}${suffix}"]
  }
}

locals {
  azs  = slice(data.aws_availability_zones.available.names, 0, var.az_count)
  tags = { Project = var.project, ManagedBy = "terraform", Component = "cluster" }
  # The interface endpoints SSM Session Manager needs in a VPC without internet access.
  ssm_endpoint_services = toset(["ssm", "ssmmessages", "ec2messages"])
}

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = "${var.project}-vpc" }
}

resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id # no rules: nothing may use the default group
}

resource "aws_subnet" "private" {
  count                   = var.az_count
  vpc_id                  = aws_vpc.this.id
  cidr_block              = cidrsubnet(var.vpc_cidr, 4, count.index)
  availability_zone       = local.azs[count.index]
  map_public_ip_on_launch = false
  tags                    = { Name = "${var.project}-private-${local.azs[count.index]}" }
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id
  tags   = { Name = "${var.project}-private" }
}

resource "aws_route_table_association" "private" {
  count          = var.az_count
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

# Endpoint policies: through the S3 gateway a node reaches the results bucket only (not any bucket
# in the region), and the SSM endpoints serve this account's principals only.
resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]
  policy            = data.aws_iam_policy_document.s3_endpoint.json
}

data "aws_iam_policy_document" "s3_endpoint" {
  statement {
    sid = "ResultsBucketOnly"
    actions = [
      "s3:ListBucket", "s3:GetBucketLocation",
      "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
    ]
    resources = ["arn:aws:s3:::${var.bucket_name}", "arn:aws:s3:::${var.bucket_name}/*"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:PrincipalAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_vpc_endpoint" "interface" {
  for_each            = local.ssm_endpoint_services
  vpc_id              = aws_vpc.this.id
  service_name        = "com.amazonaws.${var.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  private_dns_enabled = true
  subnet_ids          = aws_subnet.private[*].id
  security_group_ids  = [aws_security_group.endpoints.id]
  policy              = data.aws_iam_policy_document.ssm_endpoint[each.key].json
}

data "aws_iam_policy_document" "ssm_endpoint" {
  for_each = local.ssm_endpoint_services
  statement {
    sid       = "ThisServiceThisAccountOnly"
    actions   = ["${each.key}:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:PrincipalAccount"
      values   = [local.account_id]
    }
  }
}

# Into the storage stack's log group: it and its key outlive this stack (365 days' retention).
resource "aws_flow_log" "vpc" {
  vpc_id          = aws_vpc.this.id
  traffic_type    = "ALL"
  log_destination = var.flow_log_group_arn
  iam_role_arn    = aws_iam_role.flow_logs.arn
}

resource "aws_iam_role" "flow_logs" {
  name               = "${var.project}-flow-logs"
  assume_role_policy = data.aws_iam_policy_document.flow_logs_assume.json
}

data "aws_iam_policy_document" "flow_logs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }
    # Confused-deputy guard: only flow logs of this account assume the role.
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:aws:ec2:${var.region}:${local.account_id}:vpc-flow-log/*"]
    }
  }
}

resource "aws_iam_role_policy" "flow_logs" {
  name   = "write-flow-logs"
  role   = aws_iam_role.flow_logs.id
  policy = data.aws_iam_policy_document.flow_logs.json
}

data "aws_iam_policy_document" "flow_logs" {
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${var.flow_log_group_arn}:*"]
  }
}

# A stable name for the head: a replaced head (new private IP) is found again by workers whose
# ray-node.service restarts after losing the old GCS; new workers resolve it at boot.
resource "aws_route53_zone" "cluster" {
  name    = "${var.project}.internal"
  comment = "private: Ray head of ${var.project}"
  vpc {
    vpc_id = aws_vpc.this.id
  }
}

resource "aws_route53_record" "head" {
  zone_id = aws_route53_zone.cluster.zone_id
  name    = local.head_dns_name
  type    = "A"
  ttl     = 30
  records = [aws_instance.head.private_ip]
}
