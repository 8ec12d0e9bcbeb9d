"""Knowledge distillation: a frozen ResNet-152 master on Intel Image Classification, compact int8 students."""
