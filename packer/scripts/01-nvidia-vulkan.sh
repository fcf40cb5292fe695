#!/bin/bash
# NVIDIA driver (the base AMI's) + the Vulkan runtime CARLA's -RenderOffScreen needs.
set -euxo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q libvulkan1 vulkan-tools mesa-vulkan-drivers xdg-user-dirs libomp5 curl unzip jq awscli
nvidia-smi  # fails the build if the base image's driver is missing
