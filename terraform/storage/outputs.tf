output "bucket_name" {
  description = "The results bucket: pass it to the cluster as bucket_name."
  value       = aws_s3_bucket.results.bucket
}

output "bucket_arn" {
  description = "ARN of the results bucket."
  value       = aws_s3_bucket.results.arn
}

output "kms_key_arn" {
  description = "KMS key encrypting the bucket (nodes need kms:Decrypt/GenerateDataKey on it)."
  value       = aws_kms_key.results.arn
}

output "flow_log_group_arn" {
  description = "CloudWatch Logs group for the cluster's VPC flow logs (kept 365 days)."
  value       = aws_cloudwatch_log_group.flow_logs.arn
}
