"""The media memory: short-term (recent segments) to long-term (decayed profile) per user;
config, kernels with their numpy reference, retrieval, store and snapshot."""
