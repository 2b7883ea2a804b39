"""The problems checks run on: architectures as data, the canonical cases with their exactness
facts, the stored fixtures, and hypothesis strategies."""
