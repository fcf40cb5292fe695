locals {
  head_dns_name = "head.${var.project}.internal" # network.tf: the private zone's record
  # What user_data runs on the AMI; tests render the same templates with local stand-ins.
  node_commands = {
    etc_dir         = "/etc/ray"
    node_user       = "ubuntu"
    token_command   = "aws ssm get-parameter --region ${var.region} --name ${module.ray_token.name} --with-decryption --query Parameter.Value --output text"
    node_ip_command = "curl -sf -H \"X-aws-ec2-metadata-token: $(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token)\" http://169.254.169.254/latest/meta-data/local-ipv4"
    ray_node        = "systemctl enable --now ray-node.service"
    drain_watch     = "systemctl enable --now spot-drain.service"
  }
  metadata = {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
  }
}

resource "aws_instance" "head" {
  ami                         = var.ami_id
  instance_type               = var.head_instance_type
  subnet_id                   = aws_subnet.private[0].id
  vpc_security_group_ids      = [aws_security_group.cluster.id]
  iam_instance_profile        = aws_iam_instance_profile.node.name
  monitoring                  = true
  ebs_optimized               = true
  user_data_replace_on_change = true
  user_data = templatefile("${path.module}/templates/head.sh.tftpl", merge(local.node_commands, {
    ray_port       = var.ray_port
    dashboard_port = var.dashboard_port
    bucket         = var.bucket_name
  }))
  metadata_options {
    http_endpoint               = local.metadata.http_endpoint
    http_tokens                 = local.metadata.http_tokens
    http_put_response_hop_limit = local.metadata.http_put_response_hop_limit
  }
  root_block_device {
    encrypted   = true
    volume_type = "gp3"
    volume_size = var.root_volume_gb
  }
  tags = { Name = "${var.project}-head", RayRole = "head" }
}

resource "aws_launch_template" "worker" {
  name_prefix   = "${var.project}-worker-"
  image_id      = var.ami_id
  ebs_optimized = true
  user_data = base64encode(templatefile("${path.module}/templates/worker.sh.tftpl", merge(local.node_commands, {
    head_address = "${local.head_dns_name}:${var.ray_port}"
  })))
  iam_instance_profile {
    arn = aws_iam_instance_profile.node.arn
  }
  vpc_security_group_ids = [aws_security_group.cluster.id]
  monitoring {
    enabled = true
  }
  metadata_options {
    http_endpoint               = local.metadata.http_endpoint
    http_tokens                 = local.metadata.http_tokens
    http_put_response_hop_limit = local.metadata.http_put_response_hop_limit
  }
  block_device_mappings {
    device_name = "/dev/sda1"
    ebs {
      encrypted             = true
      volume_type           = "gp3"
      volume_size           = var.root_volume_gb
      delete_on_termination = true
    }
  }
  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.project}-worker", RayRole = "worker" })
  }
  tag_specifications {
    resource_type = "volume"
    tags          = local.tags
  }
}

resource "aws_autoscaling_group" "workers" {
  name_prefix         = "${var.project}-workers-"
  min_size            = var.worker_min
  max_size            = var.worker_max
  desired_capacity    = var.worker_desired
  vpc_zone_identifier = aws_subnet.private[*].id
  capacity_rebalance  = true
  # Capacity-rebalance and scale-in terminations give no spot notice: the instance waits here while
  # spot-drain.sh (which polls the target lifecycle state too) drains Ray, then goes on its own
  # after the heartbeat (no autoscaling endpoint or CompleteLifecycleAction right needed).
  initial_lifecycle_hook {
    name                 = "drain-ray"
    lifecycle_transition = "autoscaling:EC2_INSTANCE_TERMINATING"
    heartbeat_timeout    = 150
    default_result       = "CONTINUE"
  }
  # A new launch template (AMI, user_data) replaces running workers instead of waiting for churn.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
    }
  }
  mixed_instances_policy {
    instances_distribution {
      on_demand_base_capacity                  = 0
      on_demand_percentage_above_base_capacity = 0
      spot_allocation_strategy                 = "price-capacity-optimized"
    }
    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.worker.id
        version            = aws_launch_template.worker.latest_version
      }
      dynamic "override" {
        for_each = var.worker_instance_types
        content {
          instance_type = override.value
        }
      }
    }
  }
  dynamic "tag" {
    for_each = local.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
  lifecycle {
    precondition {
      condition     = var.worker_min <= var.worker_desired && var.worker_desired <= var.worker_max
      error_message = "need worker_min <= worker_desired <= worker_max."
    }
  }
}
