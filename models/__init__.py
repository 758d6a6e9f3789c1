"""shiftbench models: flax CNNs whose subsampling is a switch."""
