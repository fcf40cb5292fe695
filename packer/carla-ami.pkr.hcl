# The CARLA GPU AMI: NVIDIA driver + Vulkan, CARLA and its AdditionalMaps, the project's Python
# environment, Ray's systemd units; CARLA is started headless and ticked before the image is saved.
variable "region" {
  type    = string
  default = "us-west-2"
}

variable "instance_type" {
  type    = string
  default = "g5.xlarge"
}

variable "carla_version" {
  type    = string
  default = "0.9.16"
}

# CARLA publishes no checksums: ops reads these from packer/carla.sha256, recorded once from a
# download you trust; 02-carla.sh refuses a tarball that does not match before extracting it.
variable "carla_sha256" {
  type = string
  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.carla_sha256))
    error_message = "The carla_sha256 variable must be the SHA-256 (64 hex digits) of CARLA_<version>.tar.gz."
  }
}

variable "additional_maps_sha256" {
  type = string
  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.additional_maps_sha256))
    error_message = "The additional_maps_sha256 variable must be the SHA-256 (64 hex digits) of AdditionalMaps_<version>.tar.gz."
  }
}

variable "volume_size" {
  type    = number
  default = 120
}

variable "project" {
  type    = string
  default = "carla-rl"
}

locals {
  timestamp = regex_replace(timestamp(), "[- TZ:]", "")
  tags = {
    Project      = var.project
    ManagedBy    = "packer"
    CarlaVersion = var.carla_version
  }
}

source "amazon-ebs" "carla" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = "${var.project}-carla-${var.carla_version}-${local.timestamp}"
  source_ami_filter {
    filters = {
      name                = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
      architecture        = "x86_64"
    }
    owners      = ["amazon"]
    most_recent = true
  }
  # No inbound SSH from anywhere: Packer talks to the build instance through SSM Session Manager.
  ssh_username  = "ubuntu"
  ssh_interface = "session_manager"
  temporary_iam_instance_profile_policy_document {
    Version = "2012-10-17"
    Statement {
      Effect   = "Allow"
      Action   = ["ssm:UpdateInstanceInformation", "ssmmessages:*", "ec2messages:*"]
      Resource = ["*"]
    }
  }
  imds_support = "v2.0"
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = var.volume_size
    volume_type           = "gp3"
    encrypted             = true
    delete_on_termination = true
  }
  encrypt_boot    = true
  tags            = merge(local.tags, { Name = "${var.project}-carla-${var.carla_version}" })
  run_tags        = merge(local.tags, { Name = "${var.project}-ami-build" })
  snapshot_tags   = local.tags
  run_volume_tags = local.tags
}

build {
  sources = ["source.amazon-ebs.carla"]

  # The file provisioner does not create its destination folder (packer#3719): make it first.
  provisioner "shell" {
    inline = ["mkdir -p /tmp/carla-rl-files"]
  }

  provisioner "file" {
    source      = "${path.root}/files/"
    destination = "/tmp/carla-rl-files"
  }

  provisioner "file" {
    source      = "${path.root}/../dist/carla_rl_src.tar.gz"
    destination = "/tmp/carla_rl_src.tar.gz"
  }

  provisioner "shell" {
    environment_vars = [
      "CARLA_VERSION=${var.carla_version}",
      "CARLA_SHA256=${var.carla_sha256}",
      "ADDITIONAL_MAPS_SHA256=${var.additional_maps_sha256}",
    ]
    execute_command = "sudo -E bash '{{ .Path }}'"
    scripts = [
      "${path.root}/scripts/01-nvidia-vulkan.sh",
      "${path.root}/scripts/02-carla.sh",
      "${path.root}/scripts/03-python-env.sh",
      "${path.root}/scripts/04-ray-units.sh",
    ]
  }

  # Fails the build (no image saved) unless CARLA starts headless and ticks from the Python client.
  provisioner "shell" {
    execute_command = "sudo -E -u ubuntu bash '{{ .Path }}'"
    script          = "${path.root}/scripts/05-smoke-test.sh"
  }

  post-processor "manifest" {
    output     = "${path.root}/manifest.json"
    strip_path = true
    custom_data = {
      carla_version = var.carla_version
    }
  }
}
