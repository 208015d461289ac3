"""quantcore: quantize trained PyTorch models (algorithms only, no service code)."""
