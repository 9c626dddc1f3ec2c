"""The error-schema cache: online distillation of where the model errs (``cache``), with its
config, vocabulary, selection, shift screen, kernels with their numpy reference and snapshot."""
