output "head_instance_id" {
  description = "Head node: target of `aws ssm start-session` (port forward to the dashboard)."
  value       = aws_instance.head.id
}

output "head_private_ip" {
  description = "Head node's private address (the dashboard binds here, never publicly)."
  value       = aws_instance.head.private_ip
}

output "dashboard_port" {
  description = "Ray dashboard / Jobs API port on the head."
  value       = var.dashboard_port
}

output "ray_token_parameter" {
  description = "SSM SecureString holding the Ray auth token (ops reads it for job submission)."
  value       = module.ray_token.name
}

output "worker_asg_name" {
  description = "Auto scaling group of spot GPU workers."
  value       = aws_autoscaling_group.workers.name
}

output "bucket_name" {
  description = "Results bucket the cluster writes to."
  value       = var.bucket_name
}

output "head_dns_name" {
  description = "Stable private name of the head (workers join it; survives a head replacement)."
  value       = aws_route53_record.head.fqdn
}
