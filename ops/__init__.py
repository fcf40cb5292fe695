"""Cloud operations behind the make targets: AMI build, cluster up/down/status, job submission,
logs, results. Independent of carla_env (it never imports it): a laptop with AWS credentials,
terraform and packer is all it needs."""
