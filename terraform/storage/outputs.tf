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
