"""Pure PyTorch core: model, data, training, generation, checkpoints, optimizations. Imports no Ray."""
