"""Points and arrays (images too): continuous rows, affine paths, couplings, the posterior target,
distillation, MeanFlow, reflow."""
