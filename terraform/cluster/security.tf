# Intra-cluster traffic only. No ingress from outside the VPC on any port: the Ray dashboard and
# Jobs API (which run arbitrary code) are reached through an SSM port forward, never the internet.
resource "aws_security_group" "cluster" {
  name        = "${var.project}-cluster"
  description = "Ray nodes: traffic between cluster members only"
  vpc_id      = aws_vpc.this.id
  tags        = { Name = "${var.project}-cluster" }
}

resource "aws_vpc_security_group_ingress_rule" "intra_cluster" {
  security_group_id            = aws_security_group.cluster.id
  referenced_security_group_id = aws_security_group.cluster.id
  ip_protocol                  = "-1"
  description                  = "Ray GCS, raylets, object store, dashboard between nodes"
}

resource "aws_vpc_security_group_egress_rule" "intra_cluster" {
  security_group_id            = aws_security_group.cluster.id
  referenced_security_group_id = aws_security_group.cluster.id
  ip_protocol                  = "-1"
  description                  = "Ray traffic to other nodes"
}

resource "aws_vpc_security_group_egress_rule" "endpoints" {
  security_group_id            = aws_security_group.cluster.id
  referenced_security_group_id = aws_security_group.endpoints.id
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  description                  = "SSM interface endpoints"
}

resource "aws_vpc_security_group_egress_rule" "s3" {
  security_group_id = aws_security_group.cluster.id
  prefix_list_id    = aws_vpc_endpoint.s3.prefix_list_id
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  description       = "S3 through the gateway endpoint"
}

resource "aws_security_group" "endpoints" {
  name        = "${var.project}-endpoints"
  description = "VPC interface endpoints: HTTPS from cluster nodes"
  vpc_id      = aws_vpc.this.id
  tags        = { Name = "${var.project}-endpoints" }
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_from_cluster" {
  security_group_id            = aws_security_group.endpoints.id
  referenced_security_group_id = aws_security_group.cluster.id
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  description                  = "HTTPS from Ray nodes"
}
